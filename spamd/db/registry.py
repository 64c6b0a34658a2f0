"""Repository of the model registry and training runs (the retrain job builds its logic on these)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, false, select, update
from sqlalchemy.orm import Session

from spamd.db.schema import ModelFile, ModelVersion, TrainingRun
from spamd.errors import ModelNotFound

STATUSES = ("candidate", "active", "retired", "pruned")
OUTCOMES = ("running", "promoted", "rejected", "failed")


def add_version(session: Session, version: ModelVersion) -> ModelVersion:
    session.add(version)
    session.flush()
    return version


def get_version(session: Session, version: str) -> ModelVersion | None:
    return session.get(ModelVersion, version)


def lock_version(session: Session, version: str) -> ModelVersion | None:
    """The row, locked until the transaction ends."""
    _write_lock(session)
    return session.get(ModelVersion, version, with_for_update=True, populate_existing=True)


def list_versions(session: Session, lock: bool = False) -> list[ModelVersion]:
    """Every version, newest first; `lock`: each row locked until the transaction ends, as by lock_version."""
    stmt = select(ModelVersion).order_by(ModelVersion.created_at.desc())
    if not lock:
        return list(session.scalars(stmt))
    _write_lock(session)
    return list(session.scalars(stmt.with_for_update().execution_options(populate_existing=True)))


def _write_lock(session: Session) -> None:
    """SQLite has no row locks, and reads SELECT ... FOR UPDATE as a plain read: a prune and an
    activation could each decide on what the other was changing. A write that changes nothing
    takes the database's write lock now, until the transaction ends (PostgreSQL locks the rows)."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(ModelVersion).where(false()).values(status=ModelVersion.status))


def active_version(session: Session) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.status == "active")).first()


def activate(session: Session, version: str, when: datetime) -> None:
    """Make `version` the one active version; the previously active one is retired."""
    target = session.get(ModelVersion, version, with_for_update=True)
    if target is None:
        raise ModelNotFound(f"no model version {version!r} in the registry")
    session.execute(update(ModelVersion).where(ModelVersion.status == "active", ModelVersion.version != version)
                    .values(status="retired"))
    target.status, target.activated_at, target.pruned_at = "active", when, None


def rollback_target(session: Session, current: ModelVersion) -> ModelVersion | None:
    """The version a rollback from `current` goes back to: the newest older one that was ever active.

    A pruned version has no files left, so rollback steps over it to the next one.
    """
    stmt = (select(ModelVersion).where(ModelVersion.activated_at.is_not(None),
                                       ModelVersion.created_at < current.created_at,
                                       ModelVersion.version != current.version,
                                       ModelVersion.status != "pruned")
            .order_by(ModelVersion.created_at.desc()))
    return session.scalars(stmt).first()


def mark_pruned(session: Session, version: ModelVersion, when: datetime) -> None:
    """The version's files leave the database; its row stays, as `pruned`, for the history that names it."""
    version.status, version.pruned_at = "pruned", when
    session.execute(delete(ModelFile).where(ModelFile.version == version.version))


def pruned_versions(session: Session) -> set[str]:
    return set(session.scalars(select(ModelVersion.version).where(ModelVersion.status == "pruned")))


def start_run(session: Session, when: datetime, active: str | None, labels: int) -> TrainingRun:
    run = TrainingRun(started_at=when, outcome="running", active_version=active, labels=labels, metrics={}, error="")
    session.add(run)
    session.flush()
    return run


def finish_run(session: Session, run_id: int, when: datetime, outcome: str, candidate: str | None = None,
               metrics: dict[str, Any] | None = None, error: str = "") -> None:
    if outcome not in OUTCOMES[1:]:
        raise ValueError(f"a finished run is promoted, rejected or failed, not {outcome!r}")
    run = session.get_one(TrainingRun, run_id)
    run.finished_at, run.outcome, run.candidate_version = when, outcome, candidate
    run.metrics, run.error = metrics or {}, error


def last_run(session: Session) -> TrainingRun | None:
    return session.scalars(select(TrainingRun).order_by(TrainingRun.started_at.desc(), TrainingRun.id.desc())).first()
