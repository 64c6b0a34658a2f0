"""The daemon's score-log writer: batched inserts off the caller's thread, a spool while the database is away."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from spamd.db import migrate
from spamd.db.engine import make_engine
from spamd.db.schema import ScoreLog
from spamd.db.spool import Spool, encode
from spamd.db.writer import ScoreLogWriter
from spamd.scorelog import ScoreLogRow
from tests.fixtures_db import PgServer, log_row

ROOT = Path(__file__).resolve().parents[1]


def stored(engine: Engine) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(ScoreLog)) or 0


def writer(engine: Engine, tmp_path: Path, **kw: float) -> ScoreLogWriter:
    return ScoreLogWriter(engine, Spool(tmp_path / "spool"), **{"flush_interval": 0.05, "batch_size": 50, **kw})


def flushed(w: ScoreLogWriter, rows: int) -> ScoreLogWriter:
    """`w` after `rows` rows were submitted and flushed (to the database, or the spool)."""
    for n in range(rows):
        w.submit(log_row(n))
    w.flush()
    return w


def test_rows_reach_the_database_in_the_background(engine: Engine, tmp_path: Path) -> None:
    w = writer(engine, tmp_path).start()
    for n in range(120):
        w.submit(log_row(n / 60))
    deadline = time.monotonic() + 10
    while stored(engine) < 120 and time.monotonic() < deadline:
        time.sleep(0.05)
    w.close()
    assert stored(engine) == 120 and w.written == 120 and w.spooled == 0


def test_submit_does_not_wait_for_a_flush_in_progress(engine: Engine, tmp_path: Path) -> None:
    w = writer(engine, tmp_path)
    with w._lock:  # a flush holding the database: submit must still return at once
        started = time.monotonic()
        for _ in range(1000):
            w.submit(log_row())
        assert time.monotonic() - started < 1.0
    w.close()
    assert stored(engine) == 1000


def test_rows_are_spooled_while_the_database_is_away_and_replayed_when_it_is_back(
        absent_db: tuple[str, Callable[[], None]], tmp_path: Path) -> None:
    url, make_it = absent_db
    engine = make_engine(url)
    w = flushed(writer(engine, tmp_path, retry_after=0.0), 75)
    assert (w.written, w.spooled, w.pending) == (0, 75, 0)
    assert len((tmp_path / "spool").read_text().splitlines()) == 75
    make_it()
    w.submit(log_row())
    w.close()
    assert stored(engine) == 76 and w.written == 76
    assert (tmp_path / "spool").read_text() == ""
    engine.dispose()


def test_another_process_replays_a_spool_left_behind(engine: Engine, tmp_path: Path) -> None:
    rows = [log_row(n) for n in range(10)]
    Spool(tmp_path / "spool").append(rows[:7])
    Spool(tmp_path / "spool").append(rows[5:])  # a crash mid-replay may leave rows already stored
    w = writer(engine, tmp_path)
    w.close()
    assert stored(engine) == 10


def test_a_row_the_database_refuses_is_dropped_alone(engine: Engine, tmp_path: Path) -> None:
    w = writer(engine, tmp_path)
    good = [log_row(n) for n in range(5)]
    bad = log_row(time=datetime(2026, 1, 1))  # naive: the store refuses times without a zone
    for row in [*good[:2], bad, *good[2:]]:
        w.submit(row)
    w.close()
    assert stored(engine) == 5 and w.dropped == 1 and w.spooled == 0


def test_processes_appending_to_one_spool_never_interleave(tmp_path: Path) -> None:
    script = (
        "import sys; from dataclasses import replace; from pathlib import Path\n"
        "from spamd.db.spool import Spool, decode; from spamd.scorelog import new_log_id\n"
        "spool, row = Spool(Path(sys.argv[1])), decode(sys.argv[2])\n"
        "for _ in range(50): spool.append([replace(row, id=new_log_id()) for _ in range(20)])\n"
    )
    row = encode(log_row(extra={"pad": "x" * 3000}))  # rows far bigger than a pipe's atomic write
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "spool"), row], cwd=ROOT)
             for _ in range(4)]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    seen: list[str] = []
    Spool(tmp_path / "spool").replay(lambda rows: seen.extend(r.id for r in rows), batch_size=100)
    assert len(seen) == len(set(seen)) == 4 * 50 * 20


@pytest.mark.postgres
def test_rows_are_spooled_while_postgresql_is_read_only(pg_server: PgServer, tmp_path: Path) -> None:
    # A standby, or a primary failing over, refuses writes with SQLSTATE 25006, which psycopg reports
    # as an InternalError: the rows were taken for bad ones, tried one by one and dropped.
    url = pg_server.create(pg_server.new_database_url())
    migrate.upgrade(url)
    name = make_url(url).database
    with pg_server.admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
    engine = make_engine(url)
    w = flushed(writer(engine, tmp_path, retry_after=0.0), 5)
    assert (w.written, w.spooled, w.dropped) == (0, 5, 0)
    with pg_server.admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = off'))
    engine.dispose()  # new sessions take the database's setting
    w.close()
    assert stored(engine) == 5 and w.written == 5
    engine.dispose()


def test_a_damaged_spool_line_is_skipped_and_the_rest_replayed(engine: Engine, tmp_path: Path) -> None:
    rows = [log_row(n) for n in range(3)]
    (tmp_path / "spool").write_bytes(f"{encode(rows[0])}\n".encode() + b'{"id":"\xff\xfe'
                                     + f"\n{encode(rows[1])}\n{encode(rows[2])}\n".encode())
    w = writer(engine, tmp_path).start()
    w.submit(log_row(5))
    deadline = time.monotonic() + 10
    while stored(engine) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored(engine) == 4  # by the running thread: the damaged line used to kill it
    w.close()
    assert (tmp_path / "spool").read_text() == ""


class FailingSpool(Spool):
    """A spool whose first replay fails in a way nothing foresees (the one fake here)."""

    failed = False

    def replay(self, write: Callable[[list[ScoreLogRow]], None], batch_size: int) -> int:
        if not self.failed:
            self.failed = True
            raise RuntimeError("unforeseen")
        return super().replay(write, batch_size)


def test_the_writer_thread_outlives_a_failed_flush(engine: Engine, tmp_path: Path) -> None:
    spool = FailingSpool(tmp_path / "spool")
    spool.append([log_row(9)])
    w = ScoreLogWriter(engine, spool, flush_interval=0.05, batch_size=50).start()
    w.submit(log_row(1))
    deadline = time.monotonic() + 10
    while stored(engine) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored(engine) == 2 and spool.failed
    w.close()
