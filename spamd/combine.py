"""How the CNN and RNN scores become one: the RNN rule, the combiner and the long-range flag.

The rule (`never | uncertain | long | always`) says when the RNN is consulted. When it
is, the final logit is `w_cnn * cnn_logit + w_rnn * rnn_logit + bias`: a two-weight
logistic regression fit on the validation part at training time (the untrained
default averages the two logits). A message is flagged *long-range context* when the
RNN was consulted and the combined verdict differs from the CNN's verdict alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from spamd.config import RnnRule


@dataclass(frozen=True)
class Combiner:
    w_cnn: float = 0.5
    w_rnn: float = 0.5
    bias: float = 0.0

    def logit(self, cnn_logit: float, rnn_logit: float) -> float:
        return self.w_cnn * cnn_logit + self.w_rnn * rnn_logit + self.bias

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def consult_rnn(rule: RnnRule, cnn_score: float, n_tokens: int, cnn_window: int, band: tuple[float, float]) -> bool:
    """Whether the RNN reads this message, per the configured rule."""
    if rule == "always":
        return True
    if rule == "long":
        return n_tokens > cnn_window
    if rule == "uncertain":
        return band[0] <= cnn_score <= band[1]
    return False


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def fit_combiner(cnn_logits: Sequence[float], rnn_logits: Sequence[float], labels: Sequence[int]) -> Combiner:
    """Fit the two weights and bias by L2-regularised logistic regression (LBFGS, a few ms)."""
    x = torch.tensor([list(cnn_logits), list(rnn_logits)], dtype=torch.float64).T.clamp(-30, 30)  # (N, 2)
    y = torch.tensor(list(labels), dtype=torch.float64)  # (N,)
    w = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = x @ w[:2] + w[2]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y) + 1e-3 * (w[:2] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    a, b, c = (float(v) for v in w.detach())
    return Combiner(w_cnn=a, w_rnn=b, bias=c)
