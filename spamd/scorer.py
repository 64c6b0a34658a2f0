"""Deciding: raw messages → Verdicts. The CNN reads every message, the RNN per the rule.

This module only decides. Adding headers, forwarding, rejecting and logging are the
proxy's business. `Scorer` is not thread-safe; give each worker its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from spamd.combine import RnnRule, consult_rnn, sigmoid
from spamd.errors import ScoringError
from spamd.features import token_ids
from spamd.mail.parse import parse
from spamd.modelstore import ModelSet


@dataclass(frozen=True)
class Verdict:
    score: float  # final spam probability in [0, 1]
    is_spam: bool
    cnn: float
    rnn: float | None  # None when the RNN was not consulted
    long_context: bool  # the RNN was consulted and changed the CNN's verdict
    model: str
    threshold: float

    @property
    def label(self) -> str:
        return "spam" if self.is_spam else "ham"


@dataclass(frozen=True)
class ScoringPolicy:
    rnn_rule: RnnRule = "uncertain"
    uncertain_band: tuple[float, float] = (0.05, 0.95)  # CNN scores in here are uncertain
    threshold: float | None = None  # None: the model's own working threshold


def encode(raw: bytes, models: ModelSet) -> list[int]:
    """Raw bytes → token ids for this model set (never raises on any bytes)."""
    return token_ids(parse(raw), models.tokenizer)


def pad(batch: Sequence[Sequence[int]], length: int) -> torch.Tensor:
    """Right-pad/truncate id lists to one (B, T) int64 tensor, T ≤ length."""
    t = min(max((len(ids) for ids in batch), default=1), length) or 1
    out = torch.zeros((len(batch), t), dtype=torch.int64)
    for i, ids in enumerate(batch):
        row = ids[:t]
        if row:
            out[i, : len(row)] = torch.as_tensor(row, dtype=torch.int64)
    return out


class Scorer:
    def __init__(self, models: ModelSet, policy: ScoringPolicy | None = None) -> None:
        self.models = models
        self.policy = policy or ScoringPolicy()
        self.threshold = self.policy.threshold if self.policy.threshold is not None else models.manifest.threshold

    def score(self, raws: Sequence[bytes]) -> list[Verdict]:
        mails = [parse(raw) for raw in raws]
        tok = self.models.tokenizer
        # The CNN reads only the first `window` tokens: tokenize that far (one more tells a
        # long message), and read the rest only for the messages the RNN is asked about.
        head = replace(tok, max_tokens=min(tok.max_tokens, self.models.cnn.cfg.window + 1))
        return self._score([token_ids(m, head) for m in mails], lambda i: token_ids(mails[i], tok))

    def score_ids(self, batch: Sequence[Sequence[int]]) -> list[Verdict]:
        """Score messages already turned into (complete) token ids."""
        return self._score(batch, lambda i: batch[i])

    @torch.inference_mode()
    def _score(self, batch: Sequence[Sequence[int]], full_ids: Callable[[int], Sequence[int]]) -> list[Verdict]:
        if not batch:
            return []
        cnn = self.models.cnn
        cnn_logits = cnn(pad(batch, cnn.cfg.window)).tolist()
        band, window = self.policy.uncertain_band, cnn.cfg.window
        ask = [
            i
            for i, (ids, z) in enumerate(zip(batch, cnn_logits, strict=False))
            if consult_rnn(self.policy.rnn_rule, sigmoid(z), len(ids), window, band)
        ]
        rnn_logits = self._rnn_logits({i: full_ids(i) for i in ask})
        return [self._verdict(z, rnn_logits.get(i)) for i, z in enumerate(cnn_logits)]

    def _rnn_logits(self, asked: dict[int, Sequence[int]]) -> dict[int, float]:
        """RNN logits, batching only messages of equal length: the GRU reads padding, so a
        score must never depend on a batch-mate's length."""
        rnn = self.models.rnn
        by_length: dict[int, list[int]] = {}
        for i, ids in asked.items():
            by_length.setdefault(min(len(ids), rnn.cfg.window), []).append(i)
        out: dict[int, float] = {}
        for group in by_length.values():
            logits = rnn(pad([asked[i] for i in group], rnn.cfg.window)).tolist()
            out.update(zip(group, logits, strict=True))
        return out

    def _verdict(self, cnn_logit: float, rnn_logit: float | None) -> Verdict:
        cnn_score = sigmoid(cnn_logit)
        if rnn_logit is None:
            score, rnn_score = cnn_score, None
        else:
            score = sigmoid(self.models.combiner.logit(cnn_logit, rnn_logit))
            rnn_score = sigmoid(rnn_logit)
        is_spam = score >= self.threshold
        return Verdict(
            score=_finite(score),
            is_spam=is_spam,
            cnn=_finite(cnn_score),
            rnn=None if rnn_score is None else _finite(rnn_score),
            long_context=rnn_logit is not None and is_spam != (cnn_score >= self.threshold),
            model=self.models.version,
            threshold=self.threshold,
        )


def _finite(x: float) -> float:
    if not math.isfinite(x):
        raise ScoringError(f"model produced a non-finite score ({x})")
    return x
