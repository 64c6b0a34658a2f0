"""Small pieces the commands share: progress bars, argument expansion, loading the active models."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from spamd import modelstore
from spamd.config import Config
from spamd.errors import SpamdError
from spamd.modelstore import ModelSet

MAX_LIMIT = 2**31 - 1  # the most rows a --limit asks for (SQL takes a limit up to 2**63 - 1)


def expand_paths(args: Iterable[str]) -> list[str]:
    """Paths as given; an argument `@FILE` stands for the paths listed in FILE, one per line."""
    out: list[str] = []
    for arg in args:
        if arg.startswith("@") and len(arg) > 1:
            try:
                lines = Path(arg[1:]).read_text().splitlines()
            except OSError as exc:
                raise SpamdError(f"cannot read path list {arg[1:]}: {exc.strerror}") from exc
            out += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        else:
            out.append(arg)
    return out


class Bar:
    """A tqdm progress bar on stderr, fed (stage, done, total) callbacks; silent when not a tty."""

    def __init__(self, disable: bool | None = None) -> None:
        self.disable = disable
        self.stage = ""
        self.bar: tqdm | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage or self.bar is None:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=stage, unit="batch", leave=False, disable=self.disable)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def load_active(cfg: Config, version: str | None = None) -> ModelSet:
    """The models to score with: the named version, else the registry's active one, else models/ACTIVE."""
    from spamd.registry import active_in_database  # SQLAlchemy loads only when models are loaded

    models_dir = cfg.models_dir
    version = version or active_in_database(cfg.database_url, models_dir) or modelstore.active_version(models_dir)
    return modelstore.load(models_dir, version)
