"""Fixtures: tiny model versions trained in seconds on the committed fixture mail."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from spamd import modelstore
from spamd.corpus import read_messages
from spamd.features import TokenizerConfig, token_ids
from spamd.mail.headers import fingerprint
from spamd.mail.parse import parse
from spamd.modelstore import ModelSet
from spamd.nets.cnn import CNNConfig
from spamd.nets.rnn import RNNConfig
from spamd.train import Sample, TrainConfig, train

DATA = Path(__file__).parent / "data"
TINY = TrainConfig(
    epochs=20,  # 6 sufficed while the tokenizer read the fixtures' delivery headers (features.delivery_fields)
    patience=20,
    batch_size=8,
    lr=5e-3,
    threads=1,
    val_fraction=0.25,
    cnn=CNNConfig(buckets=1 << 12, embed_dim=16, widths=(1, 2, 3), filters=16, window=200),
    rnn=RNNConfig(buckets=1 << 12, embed_dim=8, hidden=8, window=400),
)


def fixture_mail(kind: str, label: str) -> list[bytes]:
    """Raw bytes of the committed fixture messages in tests/data/KIND/LABEL/."""
    return [item.raw for item in read_messages([str(DATA / kind / label)]) if item.raw is not None]


def fixture_samples(kind: str = "train") -> list[Sample]:
    tok = TokenizerConfig()
    return [
        Sample(token_ids(parse(raw), tok), int(label == "spam"), fingerprint(raw))
        for label in ("spam", "ham")
        for raw in fixture_mail(kind, label)
    ]


@dataclass(frozen=True)
class TrainedTiny:
    models_dir: Path
    version: str

    def load(self) -> ModelSet:
        return modelstore.load(self.models_dir, self.version)


def new_version(models_dir: Path, tiny: ModelSet, name: str) -> str:
    """Save the tiny models again under another version name (same weights, new manifest), created on its date."""
    copy = ModelSet(replace(tiny.manifest, version=name, created=f"{name[:4]}-{name[4:6]}-{name[6:8]}T00:00:00+00:00"),
                    tiny.cnn, tiny.rnn)
    modelstore.save(models_dir, copy)
    return name


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedTiny:
    """One tiny version trained on tests/data/train, saved and made active (session-wide; copy before changing)."""
    torch.manual_seed(0)
    models = train(fixture_samples("train"), TINY)
    models_dir = tmp_path_factory.mktemp("models")
    modelstore.save(models_dir, models)
    modelstore.set_active(models_dir, models.version)
    return TrainedTiny(models_dir, models.version)


@pytest.fixture
def models_dir(tiny_trained: TrainedTiny, tmp_path: Path) -> Path:
    """A private copy of the tiny models directory, free to change in one test."""
    dest = tmp_path / "models"
    shutil.copytree(tiny_trained.models_dir, dest)
    return dest
