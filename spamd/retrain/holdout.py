"""The deterministic holdout: a message is held out or not by its sha256 alone, run after run.

What a candidate trains on leaves out every copy of a held-out message (`training_set`): a copy in
the starter corpus, and a copy whose bytes differ only where the tokenizer does not look (the
Delivered-To of two users' mailboxes, the X-Spam-Id of one spam run sent to each user apart), which
has another sha256 but the same token ids. Both were trained on, and the gate judged the candidate
on messages it had learned.
"""

from __future__ import annotations

import array
import hashlib
from collections.abc import Sequence

from spamd.train import Sample


def content_key(ids: Sequence[int]) -> str:
    """What a model reads of a message, as a key: the sha256 of its token ids."""
    return hashlib.sha256(array.array("q", ids).tobytes()).hexdigest()


def training_set(samples: Sequence[Sample], held: Sequence[Sample]) -> list[Sample]:
    """`samples` without any copy of a held-out message, and one sample per token sequence (copies
    on both sides of the validation split would leak the same way)."""
    held_keys = {s.key for s in held} | {content_key(s.ids) for s in held}
    kept: dict[str, Sample] = {}
    for s in samples:
        content = content_key(s.ids)
        if s.key not in held_keys and content not in held_keys:
            kept[content] = s  # of copies, the last one: the site's label after the starter's wins
    return list(kept.values())


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
