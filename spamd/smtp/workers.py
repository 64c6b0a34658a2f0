"""Several workers on one port (SO_REUSEPORT): the kernel spreads connections, each worker scores its own.

Each worker is a whole proxy in its own process (event loop, scoring thread, models,
score-log writer), so the cores work in parallel without sharing a GIL. The parent only
holds the port, passes SIGTERM/SIGINT/SIGHUP on, and restarts a worker that dies after
running a while.

With `[smtp] pin_workers` (the default) worker i is bound to the i-th CPU the daemon may use
(round robin), as nginx's `worker_cpu_affinity auto` binds its workers. A worker's threads
hand the GIL to each other thousands of times a second; bound to one CPU, the thread that
takes it over runs where the other one left the caches warm, instead of being woken on the
other CPU. More messages a second and a lower p99 with it (bench/README.md: A/B runs by hand with
`bench/load`'s clients and sink).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess
from types import FrameType

from spamd.config import Config
from spamd.errors import SpamdError
from spamd.smtp import hup, server
from spamd.smtp.sinks import check_store, sql_sink
from spamd.threadnames import name_thread

log = logging.getLogger("spamd.smtp")
MIN_UPTIME = 10.0  # a worker that dies sooner is not restarted: it would only die again


def serve(cfg: Config, config_path: str | None, log_level: int = logging.WARNING) -> None:
    """`spamd serve`: one worker in this process, or `[smtp] workers` processes sharing the port."""
    name_thread("spamd-serve")
    if cfg.smtp.workers <= 1:
        server.run(cfg, config_path, sql_sink)
        return
    check_store(cfg)  # once, here: workers creating the embedded store side by side would race
    reserve = server.listen_socket(cfg.smtp.listen, reuse_port=True)  # held, never listening
    host = cfg.smtp.listen.rpartition(":")[0]
    cfg = replace(cfg, smtp=replace(cfg.smtp, listen=f"{host}:{reserve.getsockname()[1]}"))
    try:
        Supervisor(cfg, config_path, log_level).run()
    finally:
        reserve.close()


class Supervisor:
    def __init__(self, cfg: Config, config_path: str | None, log_level: int) -> None:
        self.cfg, self.config_path, self.log_level = cfg, config_path, log_level
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[int, tuple[BaseProcess, float]] = {}
        self.stopping = self.failed = False

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
        for i in range(self.cfg.smtp.workers):
            self.start(i)
        if hup.take():  # it came before the handler above (hup.py): the workers reload once up
            self.on_signal(signal.SIGHUP, None)
        while self.procs:
            for i, (p, started) in list(self.procs.items()):
                p.join(0.2)
                if p.exitcode is not None:
                    del self.procs[i]
                    self.exited(i, p, started)
        if self.failed:
            raise SpamdError("a worker could not start (see its error above)")

    def start(self, i: int) -> None:
        args = (self.cfg, self.config_path, self.log_level, i)
        p = self.ctx.Process(target=_worker, args=args, name=f"spamd-worker-{i}")
        # The worker starts with SIGHUP blocked (the mask outlives exec), so one sent while Python
        # and torch load waits for `_worker` to remember it instead of ending the worker.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.procs[i] = (p, time.monotonic())
        if self.stopping and p.pid is not None:  # a SIGTERM that came while it was being started
            os.kill(p.pid, signal.SIGTERM)

    def exited(self, i: int, p: BaseProcess, started: float) -> None:
        if self.stopping:
            return
        if time.monotonic() - started >= MIN_UPTIME:
            log.error("worker %d exited with status %s: restarting it", i, p.exitcode)
            self.start(i)
            return
        log.error("worker %d exited with status %s at start: stopping", i, p.exitcode)
        self.failed = True
        self.on_signal(signal.SIGTERM, None)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = self.stopping or signum != signal.SIGHUP
        for p, _ in self.procs.values():
            if p.pid is not None and p.exitcode is None:
                os.kill(p.pid, signum)


def pin(worker: int) -> int | None:
    """Bind this process, and the threads it starts afterwards, to one of the CPUs it may use
    (worker i to the i-th, round robin); None where the platform cannot."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))  # taskset or systemd's CPUAffinity= are respected
    cpu = allowed[worker % len(allowed)]
    os.sched_setaffinity(0, {cpu})
    return cpu


def _worker(cfg: Config, config_path: str | None, log_level: int, worker: int) -> None:
    hup.defer()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # (blocked by Supervisor.start)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    logging.getLogger("mail.log").setLevel(max(log_level, logging.WARNING))
    name_thread(f"spamd-worker-{worker}")
    if cfg.smtp.pin_workers:
        log.info("worker %d bound to CPU %s", worker, pin(worker))
    sock = server.listen_socket(cfg.smtp.listen, reuse_port=True)
    try:
        server.run(cfg, config_path, sql_sink, sock)
    except SpamdError as exc:
        log.error("%s", exc)
        raise SystemExit(1) from exc
