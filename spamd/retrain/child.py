"""The training process: spawned apart from the daemon, at lower priority, reporting back over a queue.

A crash or a kill of this process costs only the run: the version directory is written
atomically at its very end, and the registry is changed by the parent alone.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing.process import BaseProcess
from typing import Any

from spamd.config import Config
from spamd.errors import SpamdError, TrainingError
from spamd.retrain.candidate import Candidate, train_candidate
from spamd.train import Progress

log = logging.getLogger("spamd.train")
HEARTBEAT = 30.0  # seconds between refreshes of the trainer lock
# Set when this process is shutting down (`spamd serve` stopping, `spamd retrain` sent SIGTERM): a
# training in progress stops within half a second, its process killed, and the run is recorded
# failed. Otherwise the exit waited for the training to end (minutes), and a service manager's
# SIGKILL then left the run "running" for good.
STOP = threading.Event()


def run_child(cfg: Config, active: str | None, progress: Progress | None = None,
              on_start: Callable[[BaseProcess], None] | None = None,
              heartbeat: Callable[[], None] | None = None) -> Candidate:
    """Train a candidate in a spawned process and return what it reports; TrainingError if it fails or dies."""
    ctx = multiprocessing.get_context("spawn")
    q: Any = ctx.Queue()
    proc = ctx.Process(target=_main, args=(cfg, active, q, logging.getLogger().getEffectiveLevel()),
                       name="spamd-retrain", daemon=True)
    proc.start()
    if on_start is not None:
        on_start(proc)
    try:
        return _wait(proc, q, progress, heartbeat)
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        q.close()


def _wait(proc: BaseProcess, q: Any, progress: Progress | None, heartbeat: Callable[[], None] | None) -> Candidate:
    beat = time.monotonic()
    while True:
        if STOP.is_set():
            raise TrainingError("stopped: spamd is shutting down")
        if heartbeat is not None and time.monotonic() - beat > HEARTBEAT:
            heartbeat()
            beat = time.monotonic()
        try:
            msg = q.get(timeout=0.5)
        except queue.Empty:
            if proc.is_alive():
                continue
            try:
                msg = q.get(timeout=1.0)  # what it put just before exiting
            except queue.Empty:
                raise TrainingError(f"the training process died (exit status {proc.exitcode})") from None
        kind, *rest = msg
        if kind == "progress" and progress is not None:
            progress(*rest)
        elif kind == "error":
            raise TrainingError(rest[0])
        elif kind == "done":
            return Candidate(**rest[0])


def _main(cfg: Config, active: str | None, q: Any, log_level: int) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    os.nice(cfg.training.nice)  # the proxy's scoring comes first on a shared machine
    try:
        cand = train_candidate(cfg, active, lambda stage, done, total: q.put(("progress", stage, done, total)))
    except SpamdError as exc:
        q.put(("error", str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which records the failed run
        log.exception("training failed")
        q.put(("error", f"{type(exc).__name__}: {exc}"))
        return
    q.put(("done", asdict(cand)))
