"""Model versions on disk: one directory per version under `models/`, weights plus a manifest.

    models/
      ACTIVE                    the version used when the registry names none
      20261126T091500Z/
        manifest.json           model arguments, tokenizer, threshold, combiner, counts,
                                metrics, and the sha256 of every weight file
        cnn.safetensors         fp16 weights (loaded without executing code)
        rnn.safetensors

A version directory is written under a temporary name and renamed into place, so a
crash half-way never leaves a half-written version that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from spamd.combine import Combiner
from spamd.durable import fsync_path
from spamd.errors import ModelError, ModelIntegrityError, ModelNotFound
from spamd.features import TokenizerConfig
from spamd.nets.cnn import CNNConfig, TextCNN
from spamd.nets.rnn import RNNConfig, TextRNN

MANIFEST = "manifest.json"
ACTIVE = "ACTIVE"
WEIGHT_FILES = ("cnn.safetensors", "rnn.safetensors")


@dataclass(frozen=True)
class Manifest:
    version: str
    created: str
    cnn_args: dict[str, Any]
    rnn_args: dict[str, Any]
    tokenizer: dict[str, Any]
    threshold: float
    combiner: dict[str, float]
    train_counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # file name → sha256


@dataclass
class ModelSet:
    """Both networks of one version, ready to score (eval mode, float32)."""

    manifest: Manifest
    cnn: TextCNN
    rnn: TextRNN

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def tokenizer(self) -> TokenizerConfig:
        # Versions trained before `skip_delivery_headers` existed read every header, as they learnt.
        return TokenizerConfig(**{"skip_delivery_headers": False, **self.manifest.tokenizer})

    @property
    def combiner(self) -> Combiner:
        return Combiner(**self.manifest.combiner)


def new_version_name(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%SZ")


def build(cnn_cfg: CNNConfig, rnn_cfg: RNNConfig) -> tuple[TextCNN, TextRNN]:
    return TextCNN(cnn_cfg), TextRNN(rnn_cfg)


def save(models_dir: Path, models: ModelSet, *, new: bool = False) -> Path:
    """Write a version directory atomically (fp16 weights) and return its path.

    `new`: the models were just trained, so if another version already took their
    timestamped name (two trainings finishing in the same second), a suffix makes it unique.
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    if new:
        models.manifest = replace(models.manifest, version=_free_name(models_dir, models.version))
    final = models_dir / models.version
    if final.exists():
        raise ModelError(f"model version {models.version} already exists in {models_dir}")
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=models_dir))
    try:
        files = {}
        for name, net in zip(WEIGHT_FILES, (models.cnn, models.rnn), strict=False):
            tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
            save_file(tensors, str(tmp / name))
            files[name] = _sha256(tmp / name)
        manifest = Manifest(**{**asdict(models.manifest), "files": files})
        (tmp / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n")
        publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    models.manifest = manifest
    return final


def publish(tmp: Path, final: Path) -> None:
    """Rename a version written in `tmp` (a mkdtemp directory beside `final`) into place, readable by
    every user (mkdtemp makes it private, and the daemon may run as another user than the writer)
    and on disk first, so that a crash never leaves a version whose files are empty."""
    for path in tmp.iterdir():
        path.chmod(0o644)
        fsync_path(path)
    tmp.chmod(0o755)
    fsync_path(tmp)
    os.rename(tmp, final)
    fsync_path(final.parent)


def _free_name(models_dir: Path, version: str) -> str:
    name, n = version, 1
    while (models_dir / name).exists():
        n += 1
        name = f"{version}-{n}"
    return name


def read_manifest(models_dir: Path, version: str) -> Manifest:
    path = models_dir / version / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelNotFound(f"no model version {version!r} in {models_dir}") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    try:
        return Manifest(**data)
    except TypeError as exc:  # a key missing, or one this spamd does not know
        raise ModelError(f"{path} is not a manifest this spamd reads: {exc}") from exc


def verify(models_dir: Path, version: str) -> Manifest:
    """A version's manifest, once every weight file is checked against the sha256 it gives."""
    manifest = read_manifest(models_dir, version)
    for name in WEIGHT_FILES:
        path = models_dir / version / name
        expected = manifest.files.get(name)
        actual = _sha256(path) if path.exists() else None
        if actual is None:
            raise ModelError(f"model version {version}: {name} is missing")
        if actual != expected:
            raise ModelIntegrityError(
                f"model version {version}: {name} has sha256 {actual}, manifest says {expected}; refusing to load"
            )
    return manifest


def load(models_dir: Path, version: str) -> ModelSet:
    """Load a version, checking every weight file against the manifest's sha256."""
    manifest = verify(models_dir, version)
    try:
        cnn_args = {**manifest.cnn_args, "widths": tuple(manifest.cnn_args["widths"])}
        cnn, rnn = build(CNNConfig(**cnn_args), RNNConfig(**manifest.rnn_args))
    except (KeyError, TypeError) as exc:
        raise ModelError(f"model version {version}: its manifest's network arguments do not fit: {exc}") from exc
    for name, net in zip(WEIGHT_FILES, (cnn, rnn), strict=False):
        path = models_dir / version / name
        try:
            state = {k: v.to(torch.float32) for k, v in load_file(str(path)).items()}
            net.load_state_dict(state)
        except (RuntimeError, OSError, ValueError) as exc:  # weights that do not fit the manifest's networks
            raise ModelError(f"model version {version}: {name} does not load: {exc}") from exc
        net.eval()
    return ModelSet(manifest=manifest, cnn=cnn, rnn=rnn)


def list_versions(models_dir: Path) -> list[str]:
    if not models_dir.is_dir():
        return []
    return sorted(p.name for p in models_dir.iterdir() if (p / MANIFEST).is_file())


def active_version(models_dir: Path) -> str:
    """The version named in models/ACTIVE (the registry in SQL may override it)."""
    try:
        version = (models_dir / ACTIVE).read_text().strip()
    except FileNotFoundError as exc:
        raise ModelNotFound(f"no active model: {models_dir / ACTIVE} is missing") from exc
    if not version:
        raise ModelNotFound(f"no active model: {models_dir / ACTIVE} is empty")
    return version


def set_active(models_dir: Path, version: str) -> None:
    read_manifest(models_dir, version)  # refuse to point at a version that is not there
    tmp = models_dir / f".{ACTIVE}.tmp"
    tmp.write_text(version + "\n")
    fsync_path(tmp)  # else a crash could leave ACTIVE empty: "no active model" at the next start
    os.replace(tmp, models_dir / ACTIVE)
    fsync_path(models_dir)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
