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
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from spamd.db.schema import TrainerLock

log = logging.getLogger("spamd.train")
NAME = "retrain"
PG_KEY = 0x5350414D  # "SPAM": the advisory lock key spamd's trainers agree on


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"[:128]


class Held:
    """A lock that was acquired; `refresh` keeps it fresh, `release` gives it up."""

    def __init__(self, engine: Engine, holder: str, conn: Connection | None = None) -> None:
        self.engine, self.holder, self.conn = engine, holder, conn

    def refresh(self) -> None:
        if self.conn is not None:
            return  # the advisory lock lives as long as its connection
        with Session(self.engine) as s, s.begin():
            s.execute(update(TrainerLock).where(TrainerLock.name == NAME, TrainerLock.holder == self.holder)
                      .values(refreshed_at=datetime.now(UTC)))

    def release(self) -> None:
        if self.conn is not None:
            self.conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_KEY})
            self.conn.close()
            return
        with Session(self.engine) as s, s.begin():
            s.execute(delete(TrainerLock).where(TrainerLock.name == NAME, TrainerLock.holder == self.holder))


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
