"""The promotion gate: is the candidate not worse than the active version on the same holdout?

Deciding only: the job acts on the decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reasons": self.reasons}


def judge(candidate: dict[str, Any], active: dict[str, Any] | None, auc_tolerance: float,
          fpr_tolerance: float, min_per_class: int = 1) -> Decision:
    """Promote when AUC ≥ active − tolerance and ham misclassification ≤ active + tolerance.

    Both dicts are holdout reports (`n`, `spam`, `auc`, `fpr` at each one's working
    threshold). A holdout with fewer than `min_per_class` spam or ham messages (and never
    fewer than one of each) proves nothing: no promotion.
    """
    n, spam = int(candidate.get("n", 0)), int(candidate.get("spam", 0))
    least = max(1, min_per_class)
    if min(spam, n - spam) < least or candidate.get("auc") is None or not math.isfinite(candidate["auc"]):
        return Decision(False, [f"the holdout has {spam} spam and {n - spam} ham: too few to judge "
                                f"(gate_min_holdout: {least} of each)"])
    if active is None:
        return Decision(True, ["no active version to compare with"])
    reasons = []
    if candidate["auc"] < active["auc"] - auc_tolerance:
        reasons.append(f"AUC {candidate['auc']:.4f} < active {active['auc']:.4f} - {auc_tolerance}")
    if candidate["fpr"] > active["fpr"] + fpr_tolerance:
        reasons.append(f"ham misclassified {candidate['fpr']:.4f} > active {active['fpr']:.4f} + {fpr_tolerance}")
    if reasons:
        return Decision(False, reasons)
    return Decision(True, [f"AUC {candidate['auc']:.4f} vs {active['auc']:.4f}, "
                           f"ham misclassified {candidate['fpr']:.4f} vs {active['fpr']:.4f}"])
