"""Pruning old model versions: the retention plan applied to the shared registry, then to this host's models/.

    1. In one transaction, with every registry row locked (an `activate` or `rollback` on any
       host waits for it, and so does another prune): decide (`spamd.retention`), then mark
       each pruned version `pruned` and delete its files from `model_files`. Its row stays:
       training runs and score logs name it.
    2. After the commit, remove from this host's models/ the directory of every version the
       registry marks pruned (by this prune or an earlier one, on any host), except the one
       this host's models/ACTIVE names. Each is renamed away before it is deleted, so that no
       version is ever half there.

Each host can delete only its own copies. The host that trains prunes after each retrain;
the others remove theirs when their daemons follow a new active version (`sweep`), or with
`spamd models prune`. A crash between 1 and 2 leaves directories that the next prune or
sweep on this host removes. Directories the registry does not know (a candidate still being
trained, the output of `spamd train`) are never touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from spamd import modelstore, retention
from spamd.db import registry as repo
from spamd.db.schema import ModelVersion
from spamd.errors import ConfigError, ModelError, ModelNotFound

log = logging.getLogger("spamd.models")
TRASH = ".pruned-"  # a version directory is renamed into one of these, then deleted


@dataclass(frozen=True)
class Report:
    """What a prune did (or, dry run, would do)."""

    plan: retention.Plan
    was: dict[str, str] = field(default_factory=dict)  # pruned version → its status before
    removed: list[str] = field(default_factory=list)  # directories removed from this host's models/
    unregistered: list[str] = field(default_factory=list)  # directories here the registry does not know
    dry_run: bool = False


def prune(engine: Engine, models_dir: Path, keep: int, dry_run: bool = False,
          now: datetime | None = None) -> Report:
    """Keep `keep` versions besides the protected ones (0: keep every version, remove nothing).

    The caller holds the trainer lock (unless dry_run): a retrain's candidate is on disk
    before it is registered, and a prune must not judge the registry half-way through a run.
    """
    if keep < 0:
        raise ConfigError(f"[training] keep_versions must be 0 (keep all) or more, not {keep}")
    with Session(engine) as s, s.begin():
        report = judge(s, models_dir, keep, now or datetime.now(UTC), dry_run)
    if keep == 0:
        return report
    with Session(engine) as s:
        if dry_run:  # what sweep would remove
            gone = (repo.pruned_versions(s) | set(report.plan.prune)) - {_host_active(models_dir)}
            removed = [v for v in modelstore.list_versions(models_dir) if v in gone]
        else:
            removed = sweep(s, models_dir)
    if not dry_run and (report.was or removed):
        log.warning("pruned model version(s) %s; removed from %s: %s", ", ".join(report.was) or "none",
                    models_dir, ", ".join(removed) or "none")
    return replace(report, removed=removed)


def judge(session: Session, models_dir: Path, keep: int, now: datetime, dry_run: bool = False) -> Report:
    """Step 1, in the caller's transaction: lock every row, decide, and (unless dry_run) mark and delete files."""
    rows = repo.list_versions(session, lock=not dry_run)
    active = next((r for r in rows if r.status == "active"), None)
    target = repo.rollback_target(session, active) if active is not None else None
    plan = retention.plan([_entry(r) for r in rows], keep, now, target.version if target else None,
                          _host_active(models_dir))
    by_name = {r.version: r for r in rows}
    was = {v: by_name[v].status for v in plan.prune}
    if not dry_run:
        for v in plan.prune:
            repo.mark_pruned(session, by_name[v], now)
    unregistered = [v for v in modelstore.list_versions(models_dir) if v not in by_name]
    return Report(plan, was, [], unregistered, dry_run)


def sweep(session: Session, models_dir: Path, spare: Collection[str] = ()) -> list[str]:
    """Remove this host's copies of the versions the registry marks pruned; return their names.

    The version this host's models/ACTIVE names is never removed, nor any in `spare` (a
    daemon passes the version it serves).
    """
    _empty_trash(models_dir)
    gone = repo.pruned_versions(session) - {_host_active(models_dir), *spare}
    return [v for v in modelstore.list_versions(models_dir) if v in gone and _remove(models_dir, v)]


def _remove(models_dir: Path, version: str) -> bool:
    """Rename the version's directory away, then delete it; False when another process took it first."""
    try:
        trash = Path(tempfile.mkdtemp(prefix=TRASH, dir=models_dir))
    except OSError as exc:
        raise ModelError(f"cannot remove model version {version} from {models_dir}: {exc.strerror}") from exc
    try:
        os.rename(models_dir / version, trash / version)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ModelError(f"cannot remove model version {version} from {models_dir}: {exc.strerror}") from exc
    finally:
        shutil.rmtree(trash, ignore_errors=True)
    return True


def _empty_trash(models_dir: Path) -> None:
    # What a prune killed between its rename and its delete left behind.
    if models_dir.is_dir():
        for path in models_dir.glob(TRASH + "*"):
            shutil.rmtree(path, ignore_errors=True)


def _host_active(models_dir: Path) -> str | None:
    try:
        return modelstore.active_version(models_dir)
    except ModelNotFound:
        return None


def _entry(row: ModelVersion) -> retention.Entry:
    return retention.Entry(row.version, row.status, row.created_at, row.activated_at)
