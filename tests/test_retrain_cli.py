"""`spamd retrain`, `spamd models`, `spamd runs` and the scheduler's jobs, on SQLite and PostgreSQL."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from spamd import modelstore
from spamd.cli import main
from spamd.cli.retrain import EXIT_BUSY
from spamd.config import Config
from spamd.db import scorelogs
from spamd.db.engine import make_engine
from spamd.db.schema import SchedulerJob, ScoreLog
from spamd.retrain import lock, scheduler
from tests.fixtures_db import log_row
from tests.fixtures_models import fixture_mail
from tests.fixtures_retrain import label


@pytest.fixture
def cli(retrain_db: str, models_dir: Path, tmp_path: Path) -> Callable[..., Result]:
    config = tmp_path / "spamd.toml"
    config.write_text(f"""
[scoring]
models_dir = "{models_dir}"
[database]
url = "{retrain_db}"
[training]
epochs = 10
threads = 1
nice = 0
mix_starter = false
holdout_fraction = 0.25
gate_auc_tolerance = 0.05
gate_fpr_tolerance = 0.1
gate_min_holdout = 1
""")

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, ["--config", str(config), *args])

    return run


def label_all(db_url: str) -> None:
    for kind in ("train", "starter"):
        for how in ("spam", "ham"):
            label(db_url, fixture_mail(kind, how), how)


def test_retrain_then_manage_versions(cli: Callable[..., Result], retrain_db: str, models_dir: Path) -> None:
    starter = modelstore.active_version(models_dir)
    label_all(retrain_db)
    result = cli("retrain")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("promoted: candidate ")
    candidate = result.output.split()[2]
    listing = cli("models", "list")
    assert listing.exit_code == 0, listing.output
    lines = {line.split()[0]: line.split()[1] for line in listing.output.splitlines()[1:]}
    assert lines == {candidate: "active", starter: "retired"}
    history = cli("runs")
    assert history.exit_code == 0 and f"promoted  {candidate}" in history.output and starter in history.output
    assert cli("models", "rollback").output == f"active: {starter}\n"
    assert cli("models", "activate", candidate).output == f"active: {candidate}\n"
    bad = cli("models", "activate", "19990101T000000Z")
    assert bad.exit_code == 1 and "19990101T000000Z" in bad.output


def test_retrain_exit_status_on_failure_and_when_busy(cli: Callable[..., Result], retrain_db: str) -> None:
    label(retrain_db, fixture_mail("train", "spam"), "spam")  # no ham: training cannot work
    failed = cli("retrain")
    assert failed.exit_code == 1 and "failed: training needs both spam and ham" in failed.output
    engine = make_engine(retrain_db)
    held = lock.acquire(engine, stale_after=3600)
    assert held is not None
    try:
        busy = cli("retrain")
    finally:
        held.release()
        engine.dispose()
    assert busy.exit_code == EXIT_BUSY and "another trainer" in busy.output
    assert "failed" in cli("runs").output


def test_scheduler_keeps_its_jobs_in_the_database_and_waits_for_new_labels(
        retrain_cfg: Callable[..., Config], retrain_db: str) -> None:
    cfg = retrain_cfg(min_new_labels=1000, schedule="0 3 * * *")
    sched = scheduler.start(cfg)
    first = sched.get_job(scheduler.RETRAIN).next_run_time
    ran_on: queue.Queue[str] = queue.Queue()
    sched.add_jobstore("memory", "mem")  # a job that reports the OS name of the thread it ran on
    # A repeating job, not a one-shot: the scheduler's thread removes a one-shot job after
    # handing it to the pool, and if shutdown() comes first that removal raises in its thread.
    sched.add_job(lambda: ran_on.put(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text()),
                  "interval", hours=1, next_run_time=datetime.now(UTC), jobstore="mem")
    assert ran_on.get(timeout=10).strip() == "spamd-retrain"  # as top -H shows a retrain
    sched.shutdown()
    sched = scheduler.start(cfg)  # the stored job is kept, with its next run time
    assert sched.get_job(scheduler.RETRAIN).next_run_time == first
    sched.shutdown()
    engine = make_engine(retrain_db)
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(SchedulerJob)) == 2
    label_all(retrain_db)
    assert scheduler.retrain_job() == "skipped"  # 140 new labels < 1000
    scheduler._config = retrain_cfg(min_new_labels=20, epochs=10, gate_auc_tolerance=0.05, gate_fpr_tolerance=0.1)
    assert scheduler.retrain_job() in ("promoted", "rejected")
    assert scheduler.retrain_job() == "skipped"  # nothing new since that run
    with Session(engine) as s, s.begin():
        scorelogs.insert_rows(s, [log_row(minutes_ago=40 * 24 * 60), log_row(minutes_ago=5)])
    kept = scheduler._config
    scheduler._config = replace(kept, logs=replace(kept.logs, retention_days=0))
    assert scheduler.purge_job() == 0  # 0 keeps every row (it purged them all)
    scheduler._config = kept
    assert scheduler.purge_job() == 1
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(ScoreLog)) == 1
    engine.dispose()
    scheduler._config = None


def test_a_bad_schedule_is_a_config_error(retrain_cfg: Callable[..., Config]) -> None:
    from spamd.errors import ConfigError

    with pytest.raises(ConfigError, match="not a cron expression"):
        scheduler.start(retrain_cfg(schedule="every night"))
