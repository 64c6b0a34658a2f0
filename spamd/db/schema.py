"""The tables of the store as SQLAlchemy 2.x ORM classes; migrations/ must build exactly these.

Times are stored in UTC and always come back timezone-aware (`UTCDateTime`), whichever
database is underneath: SQLite keeps no offset, PostgreSQL returns the session's zone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, Index, Integer, LargeBinary, MetaData, String, Text, Unicode
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Named constraints so that migrations (batch mode on SQLite included) can refer to them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime, stored as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: spamd stores aware UTC times only")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class LabelledMessage(Base):
    """One message a user labelled spam or ham; keyed by the sha256 of its X-Spam-*-free bytes."""

    __tablename__ = "labelled_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)  # zlib-compressed, X-Spam-* headers removed
    size: Mapped[int] = mapped_column(Integer)  # uncompressed
    label: Mapped[str] = mapped_column(String(8))  # "spam" or "ham"
    labelled_by: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(8))  # "cli", "pipe" or "http"
    message_id: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(512))
    score_log_id: Mapped[str | None] = mapped_column(String(20))  # from the X-Spam-Id header, if any
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)  # "new labels since"


class ScoreLog(Base):
    """One verdict of the daemon: the columns of `spamd.scorelog.ScoreLogRow`."""

    __tablename__ = "score_logs"

    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    message_id: Mapped[str] = mapped_column(String(512), index=True)
    sender: Mapped[str] = mapped_column(String(512))
    recipients: Mapped[str] = mapped_column(Text)  # comma-separated
    client_addr: Mapped[str] = mapped_column(String(64))
    queue_id: Mapped[str] = mapped_column(String(64), index=True, server_default="")  # the MTA's (XFORWARD IDENT)
    size: Mapped[int] = mapped_column(Integer)
    cnn_score: Mapped[float | None] = mapped_column(Float)
    rnn_score: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    long_context: Mapped[bool] = mapped_column(Boolean)
    model_version: Mapped[str | None] = mapped_column(String(128))
    latency_ms: Mapped[float] = mapped_column(Float)
    error: Mapped[str] = mapped_column(Text)
    extra: Mapped[dict[str, str]] = mapped_column(JSON)

    # One index per filter of `spamd logs`, each ending in time because results are newest first.
    __table_args__ = (
        Index("ix_score_logs_verdict_time", "verdict", "time"),
        Index("ix_score_logs_action_time", "action", "time"),
        Index("ix_score_logs_sender_time", "sender", "time"),
        Index("ix_score_logs_model_version_time", "model_version", "time"),
        Index("ix_score_logs_long_context_time", "long_context", "time"),
    )


class ModelVersion(Base):
    """A trained model version in the registry (its files live under models/VERSION/).

    A pruned version keeps its row (training runs and score logs name it); only its files are gone.
    """

    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # "cnn+rnn" for the pair spamd scores with
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))  # of the manifest, which holds the weights' sha256
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    trained_on_labels: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)  # candidate, active, retired, pruned
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the last time it became active
    pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TrainingRun(Base):
    """One run of the retrain job, whatever its outcome."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16))  # running, promoted, rejected, failed
    candidate_version: Mapped[str | None] = mapped_column(String(128))
    active_version: Mapped[str | None] = mapped_column(String(128))
    labels: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    error: Mapped[str] = mapped_column(Text)


class ModelFile(Base):
    """One file of a promoted model version, so that a node without models/VERSION/ can rebuild it."""

    __tablename__ = "model_files"

    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)  # manifest.json, cnn.safetensors, ...
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class TrainerLock(Base):
    """The one-trainer lock on SQLite (PostgreSQL uses an advisory lock instead)."""

    __tablename__ = "trainer_lock"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))  # host:pid:token
    refreshed_at: Mapped[datetime] = mapped_column(UTCDateTime)  # older than lock_stale_after: a dead holder


class SchedulerJob(Base):
    """APScheduler 3's SQLAlchemyJobStore table, declared here so that migrations own it."""

    __tablename__ = "apscheduler_jobs"

    id: Mapped[str] = mapped_column(Unicode(191), primary_key=True)
    next_run_time: Mapped[float | None] = mapped_column(Float(25), index=True)
    job_state: Mapped[bytes] = mapped_column(LargeBinary)
