"""Proxy latency while the retrain job runs: p99 under a steady SMTP load, idle against training.

    python -m bench.retrain_load [--labels 5000] [--rate 100] [--workers 2] [--json bench/out/retrain_load.json]

A scratch store gets `--labels` labelled messages (SPLIT train rows); `spamd serve` (starter
models, default config otherwise) takes a steady `--rate` of SPLIT test messages from SMTP
clients and relays them to a counting sink. Latency (arrival → 250) is measured in 10 s
windows: first with nothing else running, then while `spamd retrain` trains on the labels in
its own niced process, until it ends. The bar: p99 during retraining ≤ 2 × the idle p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.adaptation import label
from bench.corpus import machine, rows
from bench.load import free_port, open_loop, sink_count, wait_smtp, wire
from spamd.db import migrate

WINDOW_S = 10.0


def write_config(run: Path, port: int, sink_port: int, workers: int) -> Path:
    cfg = run / "spamd.toml"
    cfg.write_text(f'[smtp]\nlisten = "127.0.0.1:{port}"\nworkers = {workers}\n'
                   f'[delivery]\nurl = "smtp://127.0.0.1:{sink_port}"\n'
                   f'[scoring]\nmodels_dir = "models"\n'
                   f'[database]\nurl = "sqlite:///spamd.db"\n')
    return cfg


def window(port: int, msgs: list[bytes], rate: float) -> dict[str, float]:
    return asyncio.run(open_loop(port, msgs, rate, WINDOW_S, clients=16))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default="bench/out/retrain_load.json")
    args = ap.parse_args()
    load_before = os.getloadavg()
    run = Path(tempfile.mkdtemp(prefix="spamd-retrain-load-"))
    shutil.copytree("models", run / "models")
    migrate.upgrade(f"sqlite:///{run / 'spamd.db'}")
    label(f"sqlite:///{run / 'spamd.db'}", rows("train")[: args.labels])
    msgs = [wire(r.raw()) for r in rows("test")]
    sink_port, port = free_port(), free_port()
    sink = subprocess.Popen([sys.executable, "-m", "bench.load", "--sink", str(sink_port)])
    cfg = write_config(run, port, sink_port, args.workers)
    daemon = subprocess.Popen([sys.executable, "-m", "spamd", "serve", "--config", str(cfg)], cwd=run)
    try:
        wait_smtp(sink_port, sink)
        wait_smtp(port, daemon)
        warm = window(port, msgs, args.rate)
        idle = [window(port, msgs, args.rate) for _ in range(2)]
        started = time.monotonic()
        trainer = subprocess.Popen([sys.executable, "-m", "spamd", "retrain", "--config", str(cfg)], cwd=run,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        during = []
        while trainer.poll() is None:
            during.append(window(port, msgs, args.rate))
        out = trainer.communicate()[0].decode()
        took = time.monotonic() - started
        delivered = sink_count(sink_port)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        sink.terminate()
        shutil.rmtree(run, ignore_errors=True)
    result = summarise(args, [warm], idle, during, took, trainer.returncode, out, delivered)
    result["load_average_before"] = load_before
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def summarise(args: argparse.Namespace, warm: list[dict], idle: list[dict], during: list[dict], took: float,
              code: int | None, out: str, delivered: int) -> dict[str, object]:
    idle_p99 = max(w["p99_ms"] for w in idle)
    during_p99 = max((w["p99_ms"] for w in during), default=float("nan"))
    sent = sum(int(w["sent"]) for w in warm + idle + during)
    return {
        "machine": machine(), "labels": args.labels, "rate": args.rate,
        "workers": args.workers, "retrain_exit": code, "retrain_seconds": round(took, 1),
        "retrain_output_tail": out[-400:], "idle_windows": idle, "during_windows": during,
        "idle_p99_ms": idle_p99, "worst_window_p99_during_ms": during_p99,
        "ratio": round(during_p99 / idle_p99, 2), "answered_250": sent, "delivered_at_sink": delivered,
    }


if __name__ == "__main__":
    main()
