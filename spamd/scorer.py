"""Deciding: raw messages → Verdicts. The CNN reads every message, the RNN per the rule.

This module only decides. Adding headers, forwarding, rejecting and logging are the
proxy's business.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch

from spamd.combine import RnnRule, consult_rnn, sigmoid
from spamd.errors import ScoringError
from spamd.features import token_ids
from spamd.mail.parse import parse
from spamd.modelstore import WEIGHT_FILES, ModelSet
from spamd.nets.cnn import FusedCNN, TableCNN, TextCNN
from spamd.nets.ortrnn import OrtRNN
from spamd.nets.rnn import FusedRNN, TextRNN

log = logging.getLogger("spamd.score")


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


@dataclass(frozen=True)
class RnnPending:
    """A message the CNN has read whose verdict waits for the RNN (see `Scorer.read`)."""

    cnn_logit: float
    ids: Callable[[], Sequence[int]]  # its complete token ids, read only when the RNN runs


class Scorer:
    """Scores in two passes, so that a caller can keep the slow one off other messages' path:
    `read` parses every message and runs the CNN; `consult` runs the RNN for the few that
    asked for it. `score` is both. A scorer holds nothing mutable: `read` and `consult` may
    run on two threads at once (each one on a single thread, as torch's thread pool is set).
    """

    def __init__(self, models: ModelSet, policy: ScoringPolicy | None = None, cnn_table: bool = False,
                 cnn: TableCNN | FusedCNN | None = None) -> None:
        """`cnn`: an inference form already built from the same CNN weights (`reusable_cnn`)."""
        self.models = models
        self.policy = policy or ScoringPolicy()
        self.threshold = self.policy.threshold if self.policy.threshold is not None else models.manifest.threshold
        self.cnn = cnn if cnn is not None else cnn_inference(models.cnn, cnn_table)
        self.rnn = rnn_inference(models.rnn)
        # The CNN reads only the first `window` tokens: `read` tokenizes that far (one more
        # tells a long message), and reads the rest only for the messages the RNN is asked about.
        tok = models.tokenizer
        self.head = replace(tok, max_tokens=min(tok.max_tokens, models.cnn.cfg.window + 1))

    def score(self, raws: Sequence[bytes]) -> list[Verdict]:
        return self.resolve(self.read(raws))

    def score_ids(self, batch: Sequence[Sequence[int]]) -> list[Verdict]:
        """Score messages already turned into (complete) token ids."""
        return self.resolve(self._first_pass(batch, lambda i: batch[i]))

    def read(self, raws: Sequence[bytes]) -> list[Verdict | RnnPending]:
        """Parse and run the CNN: a verdict for each message, or what the RNN must add to it."""
        mails = [parse(raw) for raw in raws]
        tok = self.models.tokenizer
        return self._first_pass([token_ids(m, self.head) for m in mails], lambda i: token_ids(mails[i], tok))

    def consult(self, pending: Sequence[RnnPending]) -> list[Verdict]:
        """Run the RNN for messages `read` left pending, and combine its score with the CNN's."""
        rnn_logits = self._rnn_logits({i: p.ids() for i, p in enumerate(pending)})
        return [self._verdict(p.cnn_logit, rnn_logits[i]) for i, p in enumerate(pending)]

    def resolve(self, first: Sequence[Verdict | RnnPending]) -> list[Verdict]:
        """`read`'s results with the pending ones consulted: one verdict per message."""
        consulted = iter(self.consult([p for p in first if isinstance(p, RnnPending)]))
        return [next(consulted) if isinstance(p, RnnPending) else p for p in first]

    @torch.inference_mode()
    def _first_pass(self, batch: Sequence[Sequence[int]],
                    full_ids: Callable[[int], Sequence[int]]) -> list[Verdict | RnnPending]:
        if not batch:
            return []
        window = self.models.cnn.cfg.window
        cnn_logits = self.cnn(batch).tolist()
        rule, band = self.policy.rnn_rule, self.policy.uncertain_band
        return [
            RnnPending(z, partial(full_ids, i)) if consult_rnn(rule, sigmoid(z), len(ids), window, band)
            else self._verdict(z, None)
            for i, (ids, z) in enumerate(zip(batch, cnn_logits, strict=True))
        ]

    @torch.inference_mode()
    def _rnn_logits(self, asked: dict[int, Sequence[int]]) -> dict[int, float]:
        """RNN logits: each message is read to its own end, so a score never depends on its
        batch-mates."""
        if not asked:
            return {}
        keys = list(asked)
        logits = self.rnn(pad([asked[i] for i in keys], self.models.rnn.cfg.window)).tolist()
        return dict(zip(keys, logits, strict=True))

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


def reusable_cnn(previous: Scorer | None, models: ModelSet, table: bool) -> TableCNN | None:
    """The previous scorer's CNN table, when `models` carry the same CNN weights (the same file, by
    its sha256) and a table is still wanted: a reload that keeps the model version (a SIGHUP for a
    config change) then neither builds the table again nor holds two of them meanwhile."""
    if previous is None or not table or not isinstance(previous.cnn, TableCNN):
        return None
    cnn_file = WEIGHT_FILES[0]
    sha = models.manifest.files.get(cnn_file)
    if sha is None or previous.models.manifest.files.get(cnn_file) != sha:
        return None
    return previous.cnn if previous.models.cnn.cfg == models.cnn.cfg else None


def cnn_inference(cnn: TextCNN, table: bool) -> TableCNN | FusedCNN:
    """The CNN's inference form. With `table` (`[scoring] cnn_table`, which the daemon reads),
    `TableCNN`: under half the CPU a message, for a table built when the models load (528 MiB for
    the starter CNN). Without it, or where that memory cannot be had, `FusedCNN`: the same scores
    by matrix products, with no table (an error is logged when the table was asked for)."""
    if table:
        try:
            return TableCNN(cnn)
        except (RuntimeError, MemoryError) as exc:  # torch's failed allocation is a RuntimeError
            log.error("cannot build the CNN's table (%d MiB), so the CNN scores by matrix products (same scores, "
                      "slower): %s: %s", TableCNN.size(cnn.cfg) >> 20, type(exc).__name__, exc)
    return FusedCNN(cnn)


def rnn_inference(rnn: TextRNN) -> OrtRNN | FusedRNN:
    """The RNN's inference form: `OrtRNN`, or where onnxruntime cannot run it (not installed for
    this platform, or refusing the graph) torch's `FusedRNN`, which gives the same scores more
    slowly, with an error logged. Scoring goes on either way."""
    try:
        return OrtRNN(rnn)
    except Exception as exc:  # noqa: BLE001 - a failing optional runtime must not stop the scoring
        log.error("the RNN's GRU cannot run in onnxruntime, so torch runs it (same scores, slower): %s: %s",
                  type(exc).__name__, exc)
        return FusedRNN(rnn)


def _finite(x: float) -> float:
    if not math.isfinite(x):
        raise ScoringError(f"model produced a non-finite score ({x})")
    return x
