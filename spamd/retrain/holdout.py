"""The deterministic holdout: a message is held out or not by its sha256 alone, run after run."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from spamd.train import Sample


def held_out(key: str, fraction: float) -> bool:
    # Salted apart from the training loop's validation split, so the two cuts are independent.
    bucket = int(hashlib.sha256(("holdout:" + key).encode()).hexdigest()[:8], 16) % 10_000
    return bucket < int(fraction * 10_000)


def split(samples: Sequence[Sample], fraction: float) -> tuple[list[Sample], list[Sample]]:
    """(train, holdout)."""
    train: list[Sample] = []
    holdout: list[Sample] = []
    for s in samples:
        (holdout if held_out(s.key, fraction) else train).append(s)
    return train, holdout
