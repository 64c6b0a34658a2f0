"""The retrain job: lock, record the run, train a candidate in a child process, gate it, promote or keep it.

    promoted   the candidate passed the gate and is the active version now
    rejected   the gate kept the active version (the candidate stays registered, inactive, until pruned)
    failed     training could not finish; nothing changed
    busy       another trainer holds the lock; no run was recorded

Whatever the outcome (busy aside), old versions are then pruned to [training] keep_versions
while the lock is still held (`spamd.prune`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from spamd import prune, registry
from spamd.config import Config
from spamd.db import registry as repo
from spamd.db.labels import count_since
from spamd.db.store import opened, unreachable
from spamd.errors import SpamdError
from spamd.retrain import gate, lock
from spamd.retrain.candidate import Candidate
from spamd.retrain.child import run_child
from spamd.train import Progress

log = logging.getLogger("spamd.train")


@dataclass(frozen=True)
class Outcome:
    outcome: str  # promoted, rejected, failed, busy
    run_id: int | None = None
    active: str | None = None  # the version active when the run started
    candidate: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    pruned: tuple[str, ...] = ()  # old versions pruned after the run


def run(cfg: Config, progress: Progress | None = None,
        on_start: Callable[[BaseProcess], None] | None = None) -> Outcome:
    """Run the job once, now (what `spamd retrain` and the scheduler call)."""
    with opened(cfg.database_url) as engine:
        held = lock.acquire(engine, cfg.training.lock_stale_after)
        if held is None:
            return Outcome("busy", error="another trainer holds the lock")
        try:
            out = _locked(cfg, engine, held, progress, on_start)
            return replace(out, pruned=_prune(cfg, engine))
        except SQLAlchemyError as exc:
            raise unreachable(cfg.database_url, exc) from exc
        finally:
            held.release()


def _locked(cfg: Config, engine: Engine, held: lock.Held, progress: Progress | None,
            on_start: Callable[[BaseProcess], None] | None) -> Outcome:
    with Session(engine) as s, s.begin():
        active = registry.seed(s, cfg.models_dir)
        if active is not None:
            registry.materialise(s, cfg.models_dir, active)
        run_id = repo.start_run(s, registry.now(), active, count_since(s, None)).id
    started = time.monotonic()
    try:
        cand = run_child(cfg, active, progress, on_start, held.refresh)
    except SpamdError as exc:
        return _failed(engine, run_id, active, str(exc), started)
    except BaseException:
        _failed(engine, run_id, active, "interrupted", started)
        raise
    try:
        held.refresh()  # still ours: a run that lost the lock must not promote beside another trainer
    except lock.LockLost as exc:
        return _failed(engine, run_id, active, str(exc), started)
    t = cfg.training
    decision = gate.judge(cand.candidate, cand.active, t.gate_auc_tolerance, t.gate_fpr_tolerance, t.gate_min_holdout)
    return _record(cfg, engine, run_id, active, cand, decision, started)


def _record(cfg: Config, engine: Engine, run_id: int, active: str | None, cand: Candidate,
            decision: gate.Decision, started: float) -> Outcome:
    outcome = "promoted" if decision.promote else "rejected"
    found = {"candidate": cand.candidate, "active": cand.active, "gate": decision.to_dict(), "counts": cand.counts,
             "seconds": {**cand.seconds, "total": round(time.monotonic() - started, 1)}}
    with Session(engine) as s, s.begin():
        registry.register(s, cfg.models_dir, cand.version, cand.counts["train"], {"holdout": cand.candidate})
        if decision.promote:
            registry.activate(s, cfg.models_dir, cand.version)
        repo.finish_run(s, run_id, registry.now(), outcome, cand.version, found)
    log.warning("retrain run %d: %s %s (%s)", run_id, outcome, cand.version, "; ".join(decision.reasons))
    return Outcome(outcome, run_id, active, cand.version, found)


def _failed(engine: Engine, run_id: int, active: str | None, error: str, started: float) -> Outcome:
    log.error("retrain run %d failed: %s", run_id, error)
    found = {"seconds": {"total": round(time.monotonic() - started, 1)}}
    with Session(engine) as s, s.begin():
        repo.finish_run(s, run_id, registry.now(), "failed", None, found, error)
    return Outcome("failed", run_id, active, None, found, error)


def _prune(cfg: Config, engine: Engine) -> tuple[str, ...]:
    """Prune old versions, the run's candidate among those judged; a failure here is logged, the run stands."""
    keep = cfg.training.keep_versions
    if not keep:
        return ()
    try:
        return tuple(prune.prune(engine, cfg.models_dir, keep).was)
    except (SpamdError, SQLAlchemyError, OSError) as exc:
        log.error("pruning old model versions failed: %s", exc)
        return ()
