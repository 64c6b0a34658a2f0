"""Which model version is active, on top of the store: register, activate, roll back, and ship files between nodes.

Once a database exists its registry is the source of truth; on first use it is seeded
from models/ACTIVE (the starter). A version's files are kept in the database as well
(`model_files`, written when it becomes active), so a node that lacks models/VERSION/
rebuilds it from there, sha256-checked, before loading it. Old versions lose their files
in both places when they are pruned (`spamd.prune`); rollback steps over them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from spamd import modelstore, prune
from spamd.db import registry as repo
from spamd.db.engine import make_engine, sqlite_path
from spamd.db.schema import ModelFile, ModelVersion
from spamd.db.store import opened, unreachable
from spamd.errors import ModelError, ModelIntegrityError, ModelNotFound, StoreError

log = logging.getLogger("spamd.models")
FILES = (modelstore.MANIFEST, *modelstore.WEIGHT_FILES)


def now() -> datetime:
    return datetime.now(UTC)


def register(session: Session, models_dir: Path, version: str, labels: int = 0,
             metrics: dict[str, Any] | None = None) -> ModelVersion:
    """Add a version found under models_dir to the registry as a candidate (or return its row)."""
    row = repo.get_version(session, version)
    if row is not None:
        return row
    manifest = modelstore.read_manifest(models_dir, version)
    row = ModelVersion(
        version=version, kind="cnn+rnn", path=str(models_dir / version),
        sha256=_sha256((models_dir / version / modelstore.MANIFEST).read_bytes()),
        created_at=datetime.fromisoformat(manifest.created), trained_on_labels=labels,
        metrics={**manifest.metrics, **(metrics or {})}, status="candidate",
    )
    return repo.add_version(session, row)


def activate(session: Session, models_dir: Path, version: str) -> None:
    """Make `version` the active one everywhere; its files go into the database for other nodes.

    The row is locked first, so that a prune running at the same time either finishes before
    (and a pruned version comes back from this host's copy, if it has one) or waits.
    """
    row = repo.lock_version(session, version)
    if (models_dir / version).is_dir():
        # A version whose weights fail their manifest's sha256 would go live on every node and
        # load on none: every message would pass unscored. (Files only in the database are
        # checked when a node rebuilds the version from them: `materialise`.)
        modelstore.verify(models_dir, version)
    if row is None:
        register(session, models_dir, version)
    elif row.status == "pruned":
        if not (models_dir / version / modelstore.MANIFEST).is_file():
            raise ModelNotFound(f"model version {version} was pruned: its files are gone from the database "
                                f"and from {models_dir}")
        log.warning("model version %s was pruned; its files go back into the database from %s", version, models_dir)
    store_files(session, models_dir, version)
    repo.activate(session, version, now())


def rollback(session: Session, models_dir: Path) -> str:
    """Activate the newest version older than the active one that was ever active (and not pruned); return it."""
    current = repo.active_version(session)
    if current is None:
        raise ModelNotFound("no active version to roll back from")
    previous = repo.rollback_target(session, current)
    if previous is None:
        raise ModelNotFound(f"no earlier active version to roll back to from {current.version}")
    activate(session, models_dir, previous.version)
    return previous.version


def seed(session: Session, models_dir: Path) -> str | None:
    """The active version's name; an empty registry is first seeded from models/ACTIVE."""
    active = repo.active_version(session)
    if active is not None:
        return active.version
    try:
        version = modelstore.active_version(models_dir)
    except ModelNotFound:
        return None
    log.info("registry: seeding the active version from %s: %s", models_dir / modelstore.ACTIVE, version)
    activate(session, models_dir, version)
    return version


def store_files(session: Session, models_dir: Path, version: str) -> None:
    """Copy a version's files into `model_files` unless they are there already."""
    have = set(session.scalars(select(ModelFile.name).where(ModelFile.version == version)))
    for name in FILES:
        if name not in have:
            data = _read(models_dir / version / name)
            session.add(ModelFile(version=version, name=name, sha256=_sha256(data), data=data))
    session.flush()


def materialise(session: Session, models_dir: Path, version: str) -> None:
    """Make sure models_dir/VERSION exists, rebuilding it from the database (atomically) when it does not."""
    if (models_dir / version / modelstore.MANIFEST).is_file():
        return
    rows = {f.name: f for f in session.scalars(select(ModelFile).where(ModelFile.version == version))}
    if set(rows) != set(FILES):
        raise ModelNotFound(f"model version {version} is neither in {models_dir} nor (whole) in the database")
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=models_dir))
    try:
        for name, f in rows.items():
            if _sha256(f.data) != f.sha256:
                raise ModelIntegrityError(f"model version {version}: {name} in the database fails its sha256")
            (tmp / name).write_bytes(f.data)
        modelstore.publish(tmp, models_dir / version)
        log.warning("model version %s copied from the database into %s", version, models_dir)
    except OSError as exc:
        if not (models_dir / version / modelstore.MANIFEST).is_file():  # else: another worker won the race
            raise ModelError(f"cannot write model version {version} into {models_dir}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_active(url: str, models_dir: Path) -> str:
    """The active version per the registry, present under models_dir (models/ACTIVE follows it)."""
    with opened(url) as engine:
        try:
            version = _resolve(engine, models_dir)
        except IntegrityError:  # two nodes seeded an empty registry at once: read the winner's
            version = _resolve(engine, models_dir)
    _follow(models_dir, version)
    return version


def _resolve(engine: Engine, models_dir: Path) -> str:
    with Session(engine) as s, s.begin():
        version = seed(s, models_dir)
        if version is None:
            raise ModelNotFound(f"no active model: the registry is empty and {models_dir} has no ACTIVE")
        materialise(s, models_dir, version)
    return version


def active_in_database(url: str, models_dir: Path) -> str | None:
    """The registry's active version when the store exists (None: use models/ACTIVE).

    A SQLite file that does not exist yet is no registry: scoring a file must not create one.
    An unreachable database is logged, and models/ACTIVE serves meanwhile; so does an active
    version that this host lacks and cannot rebuild from the database (rather than no model at
    all, which passes every message unscored; the model watcher keeps trying).
    """
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    try:
        return resolve_active(url, models_dir)
    except StoreError as exc:
        log.warning("registry unavailable, using %s: %s", models_dir / modelstore.ACTIVE, exc)
        return None
    except ModelError as exc:  # its files are not here and cannot be rebuilt: the last one this host had serves
        log.error("the registry's active version cannot be used here, using %s: %s", models_dir / modelstore.ACTIVE,
                  exc)
        return None


class ModelWatcher:
    """Polls the registry and calls `on_change(version)` when another version becomes active.

    With `sweep`, this host's copies of pruned versions are then removed (`spamd.prune.sweep`):
    a serving host materialises every promoted version, and the prune after a retrain can
    delete only the training host's copies.
    """

    def __init__(self, url: str, models_dir: Path, interval: float, current: str | None,
                 on_change: Callable[[str], Awaitable[str | None]], sweep: bool = False) -> None:
        self.url, self.models_dir, self.interval = url, models_dir, interval
        self.current, self.on_change, self.sweep = current, on_change, sweep
        self.engine = make_engine(url)

    def check(self) -> str | None:
        """The active version, materialised locally (blocking: run it in a thread)."""
        path = sqlite_path(self.url)
        if path is not None and not path.exists():
            return None  # no store yet, so no registry: connecting would create an empty file
        with Session(self.engine) as s:
            active = repo.active_version(s)
            if active is not None and active.version != self.current:
                materialise(s, self.models_dir, active.version)
            return active.version if active else None

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                try:
                    await self.poll()
                except Exception:  # noqa: BLE001 - the watcher must outlive any one poll, or the daemon never follows again
                    log.exception("model watcher: a poll failed; trying again in %.0f s", self.interval)
        finally:
            self.engine.dispose()

    async def poll(self) -> None:
        """Reload when another version is active; `current` moves only once `on_change` says that
        version is in use, so a reload that failed (or fell back to another version) is tried again."""
        try:
            version = await asyncio.to_thread(self.check)
        except (SQLAlchemyError, ModelError, OSError) as exc:
            log.warning("model watcher: %s", unreachable(self.url, exc) if isinstance(exc, SQLAlchemyError) else exc)
            return
        if version is not None and version != self.current:
            log.warning("model version %s is now active (was %s): reloading", version, self.current)
            if await self.on_change(version) != version:
                log.error("model watcher: version %s is not in use yet; trying again in %.0f s", version, self.interval)
                return
            self.current = version
            if self.sweep:
                await asyncio.to_thread(self.remove_pruned)

    def remove_pruned(self) -> None:
        """Remove this host's copies of pruned versions (blocking); a failure is logged and retried next change."""
        try:
            with Session(self.engine) as s:
                removed = prune.sweep(s, self.models_dir, spare={self.current} if self.current else set())
        except (SQLAlchemyError, ModelError, OSError) as exc:
            log.warning("cannot remove pruned model versions from %s: %s", self.models_dir, exc)
            return
        if removed:
            log.warning("removed pruned model version(s) from %s: %s", self.models_dir, ", ".join(removed))


def _follow(models_dir: Path, version: str) -> None:
    # The local pointer follows the registry, so a node starting while the database is away
    # serves the newest version it knew rather than the starter.
    try:
        if modelstore.active_version(models_dir) == version:
            return
    except ModelNotFound:
        pass
    try:
        modelstore.set_active(models_dir, version)
    except (OSError, ModelError) as exc:
        log.warning("cannot update %s: %s", models_dir / modelstore.ACTIVE, exc)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror}") from exc


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
