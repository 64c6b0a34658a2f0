"""Classifier metrics on (score, label) pairs: ROC AUC, TREC's (1-ROCA)%, error rates, thresholds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (ties count half), by the rank-sum formula."""
    pairs = sorted(zip(scores, labels, strict=False))
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        mid_rank = (i + j + 1) / 2  # ranks are 1-based; tied items share the mean rank
        rank_sum += mid_rank * sum(lab for _, lab in pairs[i:j])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@dataclass(frozen=True)
class Rates:
    fpr: float  # ham marked spam, as a fraction of ham
    fnr: float  # spam missed, as a fraction of spam


def rates_at(scores: Sequence[float], labels: Sequence[int], threshold: float) -> Rates:
    ham = [s for s, y in zip(scores, labels, strict=False) if y == 0]
    spam = [s for s, y in zip(scores, labels, strict=False) if y == 1]
    fp = sum(s >= threshold for s in ham)
    fn = sum(s < threshold for s in spam)
    return Rates(fp / max(len(ham), 1), fn / max(len(spam), 1))


def recall_at_fpr(scores: Sequence[float], labels: Sequence[int], max_fpr: float) -> float:
    """Spam recall at the lowest threshold whose ham false-positive rate is ≤ max_fpr."""
    ham = sorted((s for s, y in zip(scores, labels, strict=False) if y == 0), reverse=True)
    spam = [s for s, y in zip(scores, labels, strict=False) if y == 1]
    allowed = int(max_fpr * len(ham))  # how many ham may score at or above the threshold
    bar = ham[allowed] if allowed < len(ham) else float("-inf")
    return sum(s > bar for s in spam) / max(len(spam), 1)


def choose_threshold(scores: Sequence[float], labels: Sequence[int], ham_cost: float = 10.0) -> float:
    """The threshold minimising ham_cost × false positives + false negatives.

    Ham lost to the spam folder costs more than spam let through, as every operator
    knows; the threshold sits halfway between the two scores it separates.
    """
    pts = sorted(zip(scores, labels, strict=False))
    fn, fp = 0, sum(1 for _, y in pts if y == 0)
    best = (ham_cost * fp + fn, pts[0][0] - 1e-6 if pts else 0.5)
    for i, (s, y) in enumerate(pts):
        if y == 1:
            fn += 1
        else:
            fp -= 1
        nxt = pts[i + 1][0] if i + 1 < len(pts) else s + 1e-6
        if nxt == s:
            continue
        cost = ham_cost * fp + fn
        if cost < best[0]:
            best = (cost, (s + nxt) / 2)
    return min(max(best[1], 1e-4), 1 - 1e-4)


@dataclass(frozen=True)
class Report:
    n: int
    spam: int
    auc: float
    one_minus_roca_pct: float
    fpr: float
    fnr: float
    recall_at_fpr_0_1: float
    recall_at_fpr_0_5: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def report(scores: Sequence[float], labels: Sequence[int], threshold: float) -> Report:
    auc = roc_auc(scores, labels)
    r = rates_at(scores, labels, threshold)
    return Report(
        n=len(labels),
        spam=sum(labels),
        auc=auc,
        one_minus_roca_pct=100 * (1 - auc),
        fpr=r.fpr,
        fnr=r.fnr,
        recall_at_fpr_0_1=recall_at_fpr(scores, labels, 0.001),
        recall_at_fpr_0_5=recall_at_fpr(scores, labels, 0.005),
    )
