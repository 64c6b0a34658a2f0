"""APScheduler 3.x inside `spamd serve` (or `spamd scheduler`): retraining and the score-log purge.

Job state lives in the database (APScheduler's SQLAlchemyJobStore, table `apscheduler_jobs`,
created by migration 0002): a run missed while no scheduler was up fires once (coalesced)
when one starts. Every scheduler sharing the database may pick up a due job; the trainer
lock makes sure only one trains, and purging twice is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from spamd.config import Config
from spamd.db.engine import make_engine
from spamd.db.labels import count_since
from spamd.db.schema import TrainingRun
from spamd.db.scorelogs import purge
from spamd.db.store import opened
from spamd.errors import ConfigError, SpamdError
from spamd.retrain import child, job
from spamd.threadnames import name_thread

log = logging.getLogger("spamd.train")
RETRAIN, PURGE = "spamd-retrain", "spamd-purge-score-logs"
PURGE_SCHEDULE = "17 * * * *"  # hourly, so each purge deletes an hour of rows rather than a day's
MISFIRE_GRACE = 6 * 3600  # a run missed by less than this still happens when a scheduler comes up

# The job store pickles job arguments, and a pickled Config would carry one host's paths to
# every host sharing the database: jobs take no arguments and read the config this process
# started its scheduler with.
_config: Config | None = None


class Scheduler(BackgroundScheduler):
    """Disposes of its engine once its thread has stopped.

    APScheduler's job store disposes of it before, and the scheduler's thread, still
    running, may open a new connection that is then never closed.
    """

    def __init__(self, engine: Engine, **options: Any) -> None:
        super().__init__(jobstores={"default": SQLAlchemyJobStore(engine=engine)}, **options)
        self.engine = engine

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)
        self.engine.dispose()


def start(cfg: Config) -> Scheduler:
    """A running scheduler with both jobs; the caller shuts it down."""
    global _config
    _config = cfg
    retrain_at, purge_at = cron(cfg.training.schedule), cron(PURGE_SCHEDULE)
    with opened(cfg.database_url):
        pass  # a clear error for a database that is away or not at head, before APScheduler's own
    engine = make_engine(cfg.database_url)
    defaults = {"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE}
    pool = ThreadPoolExecutor(2, {"initializer": name_thread, "initargs": ("spamd-retrain",)})
    sched = Scheduler(engine, executors={"default": pool}, job_defaults=defaults)
    sched.start(paused=True)
    _ensure(sched, RETRAIN, retrain_job, retrain_at)
    _ensure(sched, PURGE, purge_job, purge_at)
    sched.resume()
    log.warning("scheduler: retrain at %r (next %s), score-log purge hourly", cfg.training.schedule,
                sched.get_job(RETRAIN).next_run_time)
    return sched


def cron(expr: str) -> CronTrigger:
    try:
        return CronTrigger.from_crontab(expr)
    except ValueError as exc:
        raise ConfigError(f"[training] schedule {expr!r} is not a cron expression: {exc}") from exc


def _ensure(sched: BackgroundScheduler, job_id: str, fn: object, trigger: CronTrigger) -> None:
    # Keep a stored job whose schedule is unchanged: its next run time says whether one was missed.
    stored = sched.get_job(job_id)
    if stored is None or str(stored.trigger) != str(trigger):
        sched.add_job(fn, trigger, id=job_id, name=job_id, replace_existing=True)


@contextmanager
def in_daemon(cfg: Config) -> Iterator[None]:
    """The scheduler for the length of `spamd serve`, unless [training] in_serve is off.

    Mail matters more than training: a scheduler that cannot start is logged, not fatal.
    """
    sched = None
    if cfg.training.in_serve:
        try:
            sched = start(cfg)
        except SpamdError as exc:
            log.error("scheduler not started, no scheduled retraining or purge: %s", exc)
    try:
        yield
    finally:
        if sched is not None:
            child.STOP.set()  # a retrain in progress stops now, recorded as failed (the next run retries it)
            sched.shutdown(wait=True)


def retrain_job() -> str:
    """The scheduled retrain: skipped unless enough labels arrived since the last completed run."""
    cfg = _current()
    with opened(cfg.database_url) as engine, Session(engine) as s:
        new = new_labels(s)
    if new < cfg.training.min_new_labels:
        log.warning("retrain skipped: %d new label(s) since the last run, %d needed", new, cfg.training.min_new_labels)
        return "skipped"
    return job.run(cfg).outcome


def new_labels(session: Session) -> int:
    """Labels added or changed since the last run that promoted or rejected (a failed run is retried)."""
    since = session.scalar(select(TrainingRun.started_at).where(TrainingRun.outcome.in_(("promoted", "rejected")))
                           .order_by(TrainingRun.started_at.desc()).limit(1))
    return count_since(session, since)


def purge_job() -> int:
    cfg = _current()
    if not cfg.logs.retention_days:  # 0 (or false): score logs are kept (it purged every row)
        return 0
    before = datetime.now(UTC) - timedelta(days=cfg.logs.retention_days)
    with opened(cfg.database_url) as engine, Session(engine) as s, s.begin():
        n = purge(s, before)
    log.info("purged %d score-log row(s) older than %s", n, before.isoformat(timespec="seconds"))
    return n


def _current() -> Config:
    if _config is None:
        raise SpamdError("scheduler job run outside a started scheduler")
    return _config
