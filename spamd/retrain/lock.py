"""One trainer at a time across every daemon sharing the database.

PostgreSQL: a session-level advisory lock, held by a connection kept open for the run; the
server drops it when that connection dies, so a crashed trainer never blocks the next one.
SQLite: a row in `trainer_lock`, refreshed while training; a row not refreshed within
`stale_after` seconds belongs to a dead trainer and is taken over.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, delete, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from spamd.db.schema import TrainerLock
from spamd.errors import TrainingError

log = logging.getLogger("spamd.train")
NAME = "retrain"
PG_KEY = 0x5350414D  # "SPAM": the advisory lock key spamd's trainers agree on


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"[:128]


class LockLost(TrainingError):
    """The trainer lock went while training: another trainer may hold it now."""


class Held:
    """A lock that was acquired; `refresh` keeps it fresh and says if it was lost, `release` gives it up."""

    def __init__(self, engine: Engine, holder: str, conn: Connection | None = None) -> None:
        self.engine, self.holder, self.conn = engine, holder, conn

    def refresh(self) -> None:
        """Keep the lock (SQLite: its row's time), or raise LockLost: on PostgreSQL when the lock's
        connection died (a server restart, idle_session_timeout, the network), on SQLite when the
        row was taken over as stale. The run then stops rather than train, or promote, beside
        another trainer."""
        if self.conn is not None:
            try:
                held = self.conn.scalar(text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                    " AND classid = 0 AND objid::bigint = :k AND objsubid = 1 AND granted"), {"k": PG_KEY})
            except SQLAlchemyError as exc:
                raise LockLost(f"the trainer lock's connection to the database was lost: {exc}") from exc
            if not held:
                raise LockLost("the trainer lock is no longer held")
            return
        with Session(self.engine) as s, s.begin():
            kept = s.execute(update(TrainerLock).where(TrainerLock.name == NAME, TrainerLock.holder == self.holder)
                             .values(refreshed_at=datetime.now(UTC)))
        if not kept.rowcount:  # type: ignore[attr-defined]
            raise LockLost("the trainer lock was taken over by another trainer (it was not refreshed in time)")

    def release(self) -> None:
        """Give the lock up; one already lost is only logged (the run's outcome is recorded already)."""
        try:
            if self.conn is not None:
                self.conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_KEY})
                return
            with Session(self.engine) as s, s.begin():
                s.execute(delete(TrainerLock).where(TrainerLock.name == NAME, TrainerLock.holder == self.holder))
        except SQLAlchemyError as exc:
            log.warning("releasing the trainer lock failed (the lock goes with its holder): %s", exc)
        finally:
            if self.conn is not None:
                self.conn.close()


def acquire(engine: Engine, stale_after: float, holder: str | None = None) -> Held | None:
    """Take the trainer lock, or return None when another trainer holds it."""
    holder = holder or holder_name()
    if engine.dialect.name == "postgresql":
        return _acquire_advisory(engine, holder)
    return _acquire_row(engine, holder, stale_after)


def _acquire_advisory(engine: Engine, holder: str) -> Held | None:
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    if conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": PG_KEY}):
        return Held(engine, holder, conn)
    conn.close()
    return None


def _acquire_row(engine: Engine, holder: str, stale_after: float) -> Held | None:
    now = datetime.now(UTC)
    stale = TrainerLock.refreshed_at < now - timedelta(seconds=stale_after)
    with Session(engine) as s, s.begin():
        taken = s.execute(update(TrainerLock).where(TrainerLock.name == NAME, stale)
                          .values(holder=holder, refreshed_at=now))
        if taken.rowcount:  # type: ignore[attr-defined]
            log.warning("took over a stale trainer lock (not refreshed for %.0f s)", stale_after)
            return Held(engine, holder)
    try:
        with Session(engine) as s, s.begin():
            s.add(TrainerLock(name=NAME, holder=holder, refreshed_at=now))
    except IntegrityError:
        return None
    return Held(engine, holder)
