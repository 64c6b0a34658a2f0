"""Hot reload end to end: `spamd retrain` promotes, running `spamd serve` processes stamp the new version.

Real processes, real SMTP on loopback, SQLite and PostgreSQL; on PostgreSQL two daemons
with their own models/ directories share the database: one trains, both serve the result.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from spamd import modelstore
from spamd.db.engine import make_engine
from spamd.db.schema import Base, ScoreLog, TrainingRun
from spamd.retrain.lock import NAME
from tests.fixtures_models import TrainedTiny, fixture_mail
from tests.fixtures_retrain import label
from tests.fixtures_smtp import CaptureServer, send
from tests.test_serve import free_port, start_serve, stop

HAM = b"Subject: minutes\r\nFrom: Eve <eve@example.org>\r\nMessage-ID: <m%d@example.org>\r\n\r\nAgenda below.\r\n"


def node(tmp: Path, tiny: TrainedTiny, db_url: str, down: CaptureServer) -> tuple[Path, int]:
    """A daemon's own directory: config, a copy of the starter models, a free port."""
    import shutil

    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny.models_dir, tmp / "models")
    port = free_port()
    (tmp / "spamd.toml").write_text(f"""
[smtp]
listen = "127.0.0.1:{port}"
workers = 1
[delivery]
url = "{down.url}"
[scoring]
models_dir = "models"
[database]
url = "{db_url}"
[logs]
spool = "spool.jsonl"
flush_interval = 0.1
[training]
epochs = 10
threads = 1
mix_starter = false
holdout_fraction = 0.25
gate_auc_tolerance = 0.05
gate_fpr_tolerance = 0.1
gate_min_holdout = 1
poll_interval = 0.3
in_serve = false
""")
    return tmp / "spamd.toml", port


def retrain(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "spamd", "retrain", "--config", str(config)],
                            cwd=config.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def label_all(db_url: str) -> None:
    for kind in ("train", "starter"):
        for how in ("spam", "ham"):
            label(db_url, fixture_mail(kind, how), how)


def stamped(down: CaptureServer, port: int, n: int) -> str:
    """Send one message through the proxy on `port`; the model= its X-Spam-Status names."""
    before = len(down.messages)
    assert send(port, HAM % n) == {}
    content = down.wait_for(before + 1)[-1].content
    return content.split(b" model=")[1].split(b"\r\n")[0].split()[0].decode()


def wait_for_version(down: CaptureServer, port: int, version: str, first: int) -> int:
    """Send messages until one comes back stamped `version`; return how many were sent."""
    deadline, n = time.monotonic() + 30, first
    while time.monotonic() < deadline:
        n += 1
        if stamped(down, port, n) == version:
            return n
        time.sleep(0.2)
    raise AssertionError(f"the proxy on port {port} never served {version}")


@pytest.mark.slow
def test_a_promoted_version_is_served_by_the_running_daemon(
        retrain_db: str, tiny_trained: TrainedTiny, tmp_path: Path, capture: Callable[[], CaptureServer]) -> None:
    down = capture()
    config, port = node(tmp_path / "a", tiny_trained, retrain_db, down)
    proc = start_serve(config, port)
    try:
        assert stamped(down, port, 0) == tiny_trained.version
        label_all(retrain_db)
        out, err = retrain(config).communicate(timeout=300)
        assert out.startswith(b"promoted: candidate "), (out, err)
        candidate = out.split()[2].decode()
        sent = wait_for_version(down, port, candidate, 0)
    finally:
        code, log = stop(proc)
    assert code == 0, log
    assert len(down.messages) == sent + 1  # not one message lost across the swap
    engine = make_engine(retrain_db)
    with Session(engine) as s:  # the score logs carry the new version too (the writer flushed on SIGTERM)
        versions = set(s.scalars(select(ScoreLog.model_version)))
    engine.dispose()
    assert versions == {tiny_trained.version, candidate}


@pytest.fixture
def shared_pg(pg_database: str) -> Iterator[str]:
    """The session's PostgreSQL database, emptied after the test."""
    yield pg_database
    engine = make_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(Base.metadata.tables)} RESTART IDENTITY"))
    engine.dispose()


@pytest.mark.slow
@pytest.mark.postgres
def test_two_daemons_on_one_postgresql_only_one_trains_both_serve_the_result(
        shared_pg: str, tiny_trained: TrainedTiny, tmp_path: Path, capture: Callable[[], CaptureServer]) -> None:
    down = capture()
    (config_a, port_a), (config_b, port_b) = (node(tmp_path / n, tiny_trained, shared_pg, down) for n in "ab")
    daemons = [start_serve(config_a, port_a), start_serve(config_b, port_b)]
    try:
        label_all(shared_pg)
        first = retrain(config_a)
        wait_until_running(shared_pg)
        second = retrain(config_b)  # node b asks while node a trains
        out_b, err_b = second.communicate(timeout=300)
        out_a, err_a = first.communicate(timeout=300)
        assert second.returncode == 75 and b"another trainer holds the lock" in out_b, (out_b, err_b)
        assert first.returncode == 0 and out_a.startswith(b"promoted: candidate "), (out_a, err_a)
        candidate = out_a.split()[2].decode()
        wait_for_version(down, port_a, candidate, 0)
        wait_for_version(down, port_b, candidate, 100)
    finally:
        results = [stop(p) for p in daemons]
    assert [code for code, _ in results] == [0, 0], results
    # Node b never trained: its copy of the candidate can only have come from the database.
    assert modelstore.load(tmp_path / "b" / "models", candidate).version == candidate
    engine = make_engine(shared_pg)
    with Session(engine) as s:
        assert [r.outcome for r in s.scalars(select(TrainingRun))] == ["promoted"]
    engine.dispose()


def wait_until_running(db_url: str) -> None:
    engine = make_engine(db_url)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            with Session(engine) as s:
                if s.scalar(select(TrainingRun.id).where(TrainingRun.outcome == "running")):
                    return
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise AssertionError(f"no training run started ({NAME} lock never taken)")


def test_sigterm_stops_spamd_retrain_and_records_the_run_failed(
        retrain_db: str, tiny_trained: TrainedTiny, tmp_path: Path, capture: Callable[[], CaptureServer]) -> None:
    # By default SIGTERM killed `spamd retrain` alone: its training process went on, the run stayed
    # "running", and (SQLite) the trainer lock's row blocked retrains until it went stale.
    config, _ = node(tmp_path / "a", tiny_trained, retrain_db, capture())
    label_all(retrain_db)
    proc = retrain(config)
    engine = make_engine(retrain_db)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the run is recorded before its training process starts
            with Session(engine) as s:
                if s.scalar(select(TrainingRun.outcome)) == "running":
                    break
            time.sleep(0.05)
        proc.terminate()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 1 and b"shutting down" in out, (out, err)
        with Session(engine) as s:
            assert s.scalar(select(TrainingRun.outcome)) == "failed"
            assert s.scalar(text("SELECT count(*) FROM trainer_lock")) == 0  # (PostgreSQL: an advisory lock)
    finally:
        proc.kill()
        engine.dispose()
