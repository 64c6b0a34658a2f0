"""The messages a retrain learns from: the labelled mail in the store, optionally the starter corpus."""

from __future__ import annotations

import csv
from pathlib import Path

from sqlalchemy.orm import Session

from spamd.corpus import read_messages
from spamd.db.labels import iter_labelled
from spamd.errors import TrainingError
from spamd.features import TokenizerConfig, token_ids
from spamd.mail.headers import as_learned, fingerprint
from spamd.mail.parse import parse
from spamd.train import Sample


def labelled(session: Session, tok: TokenizerConfig) -> list[Sample]:
    """Every labelled message, keyed by its stored sha256."""
    return [Sample(token_ids(parse(raw), tok), int(label == "spam"), sha) for sha, label, raw in iter_labelled(session)]


def starter(path: Path, tok: TokenizerConfig, subject_tag: str = "") -> list[Sample]:
    """The starter corpus: the `train` rows of PATH/SPLIT.tsv (path, label, split), else PATH/spam and PATH/ham."""
    if (path / "SPLIT.tsv").is_file():
        with open(path / "SPLIT.tsv") as fh:
            rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["split"] == "train"]
        spam = [str(path / r["path"]) for r in rows if r["label"] == "spam"]
        ham = [str(path / r["path"]) for r in rows if r["label"] == "ham"]
    elif (path / "spam").is_dir() and (path / "ham").is_dir():
        spam, ham = [str(path / "spam")], [str(path / "ham")]
    else:
        raise TrainingError(f"starter corpus {path}: no SPLIT.tsv and no spam/ and ham/ directories")
    return _read(spam, 1, tok, subject_tag) + _read(ham, 0, tok, subject_tag)


def _read(paths: list[str], label: int, tok: TokenizerConfig, subject_tag: str) -> list[Sample]:
    return [sample_of(item.raw, label, tok, subject_tag) for item in read_messages(paths) if item.raw is not None]


def sample_of(raw: bytes, label: int, tok: TokenizerConfig, subject_tag: str = "") -> Sample:
    """A message read from a file as training reads it, as labelling keeps it (`as_learned`: as
    spamd scored it, when it is a delivered copy of spamd's, its `subject_tag` off, with LF line
    endings), keyed by the sha256 of those bytes."""
    scored = as_learned(raw, subject_tag)
    return Sample(token_ids(parse(scored), tok), label, fingerprint(scored))
