"""Load through Postfix: smtp-source → Postfix → spamd → Postfix → smtp-sink, against Postfix alone.

    python -m bench.postfix_load [--messages 3000] [--sessions 10] [--workers 2] [--json bench/out/postfix_load.json]

Three runs on throwaway loopback instances (tests/postfix_instance.py, configured from
deploy/postfix/): `none` (Postfix relays straight to smtp-sink: the MTA's own ceiling),
`after-queue` (content_filter through spamd) and `before-queue` (smtpd_proxy_filter
through spamd). Postfix's smtp-source sends half ham, half spam (committed fixture mail)
over parallel sessions; the run ends when smtp-sink has taken every message. Reported:
how fast Postfix accepted the mail (smtp-source's wall time), how fast it came out the
other end, and the queue, sampled with `postqueue -j`. spamd uses the starter models.
Needs root and the postfix package.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench.corpus import machine
from tests.fixtures_models import fixture_mail
from tests.postfix_instance import MAILBOX, PostfixInstance, SpamdProcess, free_port, wait_listening

ROOT = Path(__file__).resolve().parent.parent


class QueueSampler:
    """`postqueue -j` every `every` seconds in a thread: (seconds since start, messages per queue)."""

    def __init__(self, postfix: PostfixInstance, every: float = 0.25) -> None:
        self.postfix, self.every = postfix, every
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            counts = Counter(str(m["queue_name"]) for m in self.postfix.queue())
            self.samples.append((round(time.monotonic() - self._started, 2), dict(counts)))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def sent_to_sink(postfix: PostfixInstance, sink_port: int) -> int:
    return postfix.log().count(f"relay=127.0.0.1[127.0.0.1]:{sink_port}, ")


def inject(port: int, files: list[Path], messages: int, sessions: int) -> subprocess.Popen[bytes]:
    """One smtp-source per file, sharing the messages and sessions; returns the last (all are waited on)."""
    procs = [subprocess.Popen(["smtp-source", "-s", str(max(1, sessions // len(files))),
                               "-m", str(messages // len(files)), "-f", "alice@example.org", "-t", MAILBOX,
                               "-F", str(f), f"127.0.0.1:{port}"]) for f in files]
    for p in procs:
        p.wait()
    return procs[-1]


def run(mode: str, files: list[Path], args: argparse.Namespace, work: Path) -> dict[str, object]:
    sink_port, spamd_port = free_port(), free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "postfix", f"127.0.0.1:{sink_port}", "256"])
    postfix = PostfixInstance(mode, spamd_port, sink_port=sink_port)
    spamd = None
    if mode != "none":
        spamd = SpamdProcess(work / mode, ROOT / "models", spamd_port, postfix.reinject_port, workers=args.workers)
    try:
        wait_listening(sink_port)
        postfix.start()
        if spamd:
            spamd.start()
        sampler = QueueSampler(postfix)
        started = time.monotonic()
        inject(postfix.public_port, files, args.messages, args.sessions)
        accepted_s = time.monotonic() - started
        queued_after_inject = len(postfix.queue())
        while sent_to_sink(postfix, sink_port) < args.messages and time.monotonic() - started < args.timeout:
            time.sleep(0.2)
        delivered_s = time.monotonic() - started
        sampler.stop()
        delivered = sent_to_sink(postfix, sink_port)
        deferred = postfix.log().count("status=deferred")
    finally:
        if spamd:
            spamd.stop()
        postfix.stop()
        sink.terminate()
        sink.wait(10)
        log = postfix.log()
        postfix.remove()
    peak = max((sum(c.values()) for _, c in sampler.samples), default=0)
    result = {
        "mode": mode, "messages": args.messages, "sessions": args.sessions, "delivered": delivered,
        "deferred_attempts": deferred, "accepted_per_s": round(args.messages / accepted_s, 1),
        "accept_s": round(accepted_s, 2), "delivered_per_s": round(delivered / delivered_s, 1),
        "end_to_end_s": round(delivered_s, 2), "queue_peak": peak, "queue_after_inject": queued_after_inject,
        "queue_samples": sampler.samples,
    }
    if delivered < args.messages:
        result["postfix_log_tail"] = log[-3000:]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2, help="spamd worker processes")
    ap.add_argument("--modes", default="none,after-queue,before-queue")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one run's delivery")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "postfix_load.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spamd-postfix-load-"))
    files = []
    for label in ("ham", "spam"):
        files.append(work / f"{label}.eml")
        files[-1].write_bytes(fixture_mail("train", label)[0])
    try:
        results = [run(mode, files, args, work) for mode in args.modes.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for r in results:
        print(f"{r['mode']:>12}: {r['delivered']}/{r['messages']} delivered; accepted {r['accepted_per_s']} msg/s "
              f"({r['accept_s']} s), through to smtp-sink {r['delivered_per_s']} msg/s ({r['end_to_end_s']} s); "
              f"queue peak {r['queue_peak']}, {r['queue_after_inject']} queued when injection ended, "
              f"{r['deferred_attempts']} deferrals")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=1) + "\n")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
