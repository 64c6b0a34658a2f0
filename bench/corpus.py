"""The shared SpamAssassin corpus and its fixed SPLIT.tsv, and bogofilter run beside spamd."""

from __future__ import annotations

import csv
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from spamd.corpus import read_messages
from spamd.features import delivery_fields
from spamd.mail.headers import header_fields, split_header_block

CORPUS = Path(os.environ.get("SPAMD_CORPUS", Path(__file__).resolve().parents[2] / "shared/corpora/spamassassin"))


@dataclass(frozen=True)
class Row:
    path: Path
    label: int  # 1 spam, 0 ham
    split: str
    folder: str

    def raw(self) -> bytes:
        """The message as stored in the corpus (the mbox From_ line removed)."""
        item = next(read_messages([str(self.path)]))
        assert item.raw is not None, item.error
        return item.raw

    def as_received(self) -> bytes:
        """The message as spamd in front of the collecting site's MTA would have seen it: without
        the fields its final delivery wrote on top (Return-Path, Delivered-To, loopback and
        fetchmail hops: `spamd.features.delivery_fields`)."""
        return without_delivery_fields(self.raw())


def without_delivery_fields(raw: bytes) -> bytes:
    block, rest = split_header_block(raw)
    fields = header_fields(block)
    named = [(f.split(b":", 1)[0].decode("latin-1").strip(), f.partition(b":")[2].decode("latin-1"))
             for f in fields]
    return b"".join(fields[delivery_fields(named):]) + rest


def write_as_received(rows: list[Row], folder: Path) -> list[Path]:
    """Each row's `as_received` bytes in a file of its own under `folder` (for bogofilter)."""
    paths = []
    for i, r in enumerate(rows):
        paths.append(folder / f"{i:05d}.eml")
        paths[-1].write_bytes(r.as_received())
    return paths


def rows(split: str | None = None, folders: tuple[str, ...] | None = None) -> list[Row]:
    with open(CORPUS / "SPLIT.tsv") as fh:
        out = [
            Row(CORPUS / r["path"], int(r["label"] == "spam"), r["split"], r["path"].split("/")[0])
            for r in csv.DictReader(fh, delimiter="\t")
        ]
    return [r for r in out if (split is None or r.split == split) and (folders is None or r.folder in folders)]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


class Bogofilter:
    """A private bogofilter word list, trained and queried in bulk mode."""

    def __init__(self) -> None:
        if shutil.which("bogofilter") is None:
            raise RuntimeError("bogofilter is not installed (apt-get install bogofilter)")
        self.dir = tempfile.mkdtemp(prefix="bogo-")

    def train(self, spam: list[Path], ham: list[Path]) -> None:
        for flag, paths in (("-s", spam), ("-n", ham)):
            for i in range(0, len(paths), 500):
                chunk = [str(p) for p in paths[i : i + 500]]
                subprocess.run(["bogofilter", "-C", "-d", self.dir, flag, "-B", *chunk], check=True)

    def score(self, paths: list[Path]) -> list[float]:
        scores: dict[str, float] = {}
        for i in range(0, len(paths), 500):
            chunk = [str(p) for p in paths[i : i + 500]]
            out = subprocess.run(["bogofilter", "-C", "-d", self.dir, "-T", "-B", *chunk],
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                name, _, value = line.rsplit(" ", 2)
                scores[name] = float(value)
        return [scores[str(p)] for p in paths]

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
