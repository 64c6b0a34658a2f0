"""Repository of the model registry and training runs (the retrain job builds its logic on these)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from spamd.db.schema import ModelVersion, TrainingRun
from spamd.errors import ModelNotFound

STATUSES = ("candidate", "active", "retired")
OUTCOMES = ("running", "promoted", "rejected", "failed")


def add_version(session: Session, version: ModelVersion) -> ModelVersion:
    session.add(version)
    session.flush()
    return version


def get_version(session: Session, version: str) -> ModelVersion | None:
    return session.get(ModelVersion, version)


def list_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc())))


def active_version(session: Session) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.status == "active")).first()


def activate(session: Session, version: str, when: datetime) -> None:
    """Make `version` the one active version; the previously active one is retired."""
    target = session.get(ModelVersion, version, with_for_update=True)
    if target is None:
        raise ModelNotFound(f"no model version {version!r} in the registry")
    session.execute(update(ModelVersion).where(ModelVersion.status == "active", ModelVersion.version != version)
                    .values(status="retired"))
    target.status, target.activated_at = "active", when


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
