"""The daemon's score-log writer: `submit` queues in memory; a thread inserts batches or spools them.

    event loop ── submit(row) ──▶ deque (never blocks, never raises)
    writer thread, every flush_interval or batch_size rows:
        database up   ──▶ batched INSERT (and first, replay the spool if it has rows)
        database down ──▶ append to the spool file; retry the database after `retry_after`

A row that the database refuses for itself (bad data) is logged and dropped so that it
cannot hold back the others; when the database is away, the rows are kept in the spool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from spamd.config import Config
from spamd.db.scorelogs import insert_rows
from spamd.db.spool import Spool
from spamd.scorelog import ScoreLogRow
from spamd.threadnames import name_thread

log = logging.getLogger("spamd.db")

# Errors that mean "the database is not there right now" (down, locked, not yet migrated):
# the rows are kept. Any other error means the rows themselves were refused.
DOWN = (OperationalError, InterfaceError, ProgrammingError, PoolTimeout)
# ...and, from PostgreSQL, the SQLSTATEs of a server that cannot take any row just now, whatever
# class of error the driver gives them: a read-only server (25006, a standby, or a primary
# failing over), a connection lost (08), a transaction to retry (40), a full disk or too many
# connections (53), a shutdown (57), an I/O error (58).
SERVER_STATES = ("25006", "08", "40", "53", "57", "58")
# A backlog is written several INSERTs of batch_size rows to a commit: each commit rewrites
# every index page it touched, so fewer commits keep up with bursts on a big table.
BATCHES_PER_COMMIT = 10


class Down(Exception):
    """The database cannot take rows just now (`_store` raises it for DOWN, and SERVER_STATES)."""


def database_away(exc: BaseException) -> bool:
    """Whether `exc` says the database is away, not that a row was refused."""
    if isinstance(exc, DOWN):
        return True
    state = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(state, str) and state.startswith(SERVER_STATES)


class ScoreLogWriter:
    """A `ScoreLogSink` for the daemon. One per process: create it after forking, `close()` it at exit."""

    def __init__(self, engine: Engine, spool: Spool, flush_interval: float = 0.5, batch_size: int = 500,
                 retry_after: float = 5.0, max_pending: int = 1_000_000) -> None:
        self.engine, self.spool = engine, spool
        self.flush_interval, self.batch_size = flush_interval, batch_size
        self.retry_after, self.max_pending = retry_after, max_pending
        self.written = self.spooled = self.dropped = 0
        self._queue: deque[ScoreLogRow] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._down_until = 0.0
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, cfg: Config, engine: Engine) -> ScoreLogWriter:
        spool = Spool(cfg.path(cfg.logs.spool))
        return cls(engine, spool, cfg.logs.flush_interval, cfg.logs.batch_size)

    def start(self) -> ScoreLogWriter:
        self._thread = threading.Thread(target=self._run, name="spamd-scorelog", daemon=True)
        self._thread.start()
        return self

    def submit(self, row: ScoreLogRow) -> None:
        if len(self._queue) >= self.max_pending:
            # Only when the writer thread is stuck for a long time: memory matters more then.
            self.dropped += 1
            return
        self._queue.append(row)
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread and write out everything still queued."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush()

    def _run(self) -> None:
        name_thread("spamd-scorelog")
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the writer must outlive any one failure, or every row after it is lost
                log.exception("score-log writer: a flush failed; the writer goes on")

    def flush(self) -> None:
        """Write every queued row now: to the database if it answers, else to the spool."""
        with self._lock:
            self._replay_spool()
            while self._queue:
                take = min(self.batch_size * BATCHES_PER_COMMIT, len(self._queue))
                self._write([self._queue.popleft() for _ in range(take)])

    def _replay_spool(self) -> None:
        if self._is_down() or not self.spool.has_rows():
            return
        try:
            n = self.spool.replay(self._store, self.batch_size)
        except Down as exc:
            self._mark_down(exc.__cause__ or exc)
            return
        except OSError as exc:
            log.error("score-log spool %s cannot be replayed: %s", self.spool.path, exc)
            return
        log.warning("score-log database is back: replayed %d spooled rows", n)

    def _write(self, batch: list[ScoreLogRow]) -> None:
        if not self._is_down():
            try:
                self._store(batch)
                return
            except Down as exc:
                self._mark_down(exc.__cause__ or exc)
        self._to_spool(batch)

    def _store(self, rows: list[ScoreLogRow]) -> None:
        """Insert rows; a row refused for itself is logged and dropped. Raises only Down."""
        try:
            with Session(self.engine) as session, session.begin():
                for i in range(0, len(rows), self.batch_size):
                    insert_rows(session, rows[i : i + self.batch_size])
            self.written += len(rows)
        except Exception as exc:  # noqa: BLE001 - a bad row must not hold back the others
            if database_away(exc):
                raise Down(str(exc)) from exc
            if len(rows) > 1:
                for row in rows:
                    self._store([row])
                return
            self.dropped += 1
            log.error("%s: score-log row refused and dropped: %s", rows[0].id, exc)

    def _to_spool(self, batch: list[ScoreLogRow]) -> None:
        try:
            self.spool.append(batch)
            self.spooled += len(batch)
        except OSError as exc:
            self.dropped += len(batch)
            log.error("score-log spool %s failed, %d rows lost: %s", self.spool.path, len(batch), exc)

    def _is_down(self) -> bool:
        return time.monotonic() < self._down_until

    def _mark_down(self, exc: BaseException) -> None:
        if not self._is_down():
            log.warning("score-log database unreachable, spooling to %s: %s", self.spool.path, exc)
        self._down_until = time.monotonic() + self.retry_after
