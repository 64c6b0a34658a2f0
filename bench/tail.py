"""Where the latency tail comes from: each message's latency through `spamd serve` at a fixed rate.

    python -m bench.tail [--rate 450] [--seconds 10] [--order file|shuffled] [--balance]
                         [--batch-max N] [--batch-wait-ms MS] [--runs 1] [--json bench/out/tail.json]

`bench.load` gives p50/p99 at half of the peak; this gives, for the same kind of run (2
workers, 32 client connections, the SPLIT test messages, the load generator and sink of
`bench.load`), which messages make up the slowest 1% (by corpus folder), and how the client
connections were split between the workers. With SO_REUSEPORT the kernel hashes each
connection to a worker, so 32 connections split 16/16 only by chance, and a client (as
`bench.load`'s, as an MTA's delivery agents) that takes whichever connection is free sends
each worker a share of the messages in proportion to its connections. `--balance` opens 64
connections and keeps 16 on each worker, to measure what an even split would give.
Latency here is raw (arrival → 250), not minus the sink's own, as `bench.load` reports it.
Each run also gives the daemon's RSS before and after, and the messages the sink counted
against those answered 250: with a long `--seconds`, a soak test for leaks and loss.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import collections
import gc
import json
import math
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.corpus import machine, rows
from bench.load import Client, closed_loop, memory_mb, scoring_extra, sink_count, start_sink, start_spamd, wire

CLIENTS, WORKERS = 32, 2


def owners(port: int) -> dict[int, int]:
    """Client-side port → pid of the worker holding the other end, for the connections to `port` (ss)."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"sport = :{port}"],
                         capture_output=True, text=True, check=True).stdout
    return {int(m.group(1)): int(m.group(2)) for m in re.finditer(rf":{port}\s+\S+:(\d+)\s.*?pid=(\d+)", out)}


async def connect(port: int, balance: bool) -> tuple[list[Client], list[int]]:
    """CLIENTS open connections, and how many each worker holds."""
    clients = [await Client().open(port) for _ in range(CLIENTS * (2 if balance else 1))]
    await asyncio.sleep(0.3)  # the workers have accepted every connection
    held = owners(port)
    by_worker: dict[int, list[Client]] = collections.defaultdict(list)
    for c in clients:
        by_worker[held.get(c.w.get_extra_info("sockname")[1], 0)].append(c)
    if balance:
        keep = [c for cs in by_worker.values() for c in cs[: CLIENTS // WORKERS]]
        for c in set(clients) - set(keep):
            await c.close()
        clients = keep
        by_worker = {w: cs[: CLIENTS // WORKERS] for w, cs in by_worker.items()}
    return clients, sorted(len(cs) for cs in by_worker.values())


async def fixed_rate(port: int, msgs: list[bytes], rate: float, seconds: float,
                     balance: bool) -> tuple[list[tuple[int, float]], list[int]]:
    """Message i arrives at i/rate and takes the connection free longest; (i, latency ms) for each.

    Nothing that the garbage collector walks piles up over a run (finished tasks are dropped,
    latencies go into an array), so that on a long run the load generator's own collections
    stay short and do not show up as the daemon's latency."""
    clients, split = await connect(port, balance)
    free: asyncio.Queue[Client] = asyncio.Queue()
    for c in clients:
        free.put_nowait(c)
    n = int(rate * seconds)
    latency = array.array("d", [math.nan]) * n
    running: set[asyncio.Task[None]] = set()

    async def one(i: int, arrival: float) -> None:
        c = await free.get()
        ok = await c.send(msgs[i % len(msgs)])
        latency[i] = (time.perf_counter() - arrival) * 1000 if ok else math.inf
        free.put_nowait(c)

    start = time.perf_counter()
    for i in range(n):
        arrival = start + i / rate
        await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
        task = asyncio.create_task(one(i, arrival))
        running.add(task)
        task.add_done_callback(running.discard)
    if running:
        await asyncio.gather(*running)
    for c in clients:
        await c.close()
    return list(enumerate(latency)), split


class GcPauses:
    """The longest garbage collection in this process (the load generator) while in the block:
    its pauses would be counted as the daemon's latency."""

    def __init__(self) -> None:
        self.longest_ms, self._start = 0.0, 0.0

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.longest_ms = max(self.longest_ms, (time.perf_counter() - self._start) * 1000)


def run(models: Path, sink_port: int, msgs: list[bytes], folders: list[str],
        args: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="spamd-tail-"))
    try:
        proc, port = start_spamd(tmp, models, sink_port, WORKERS, True, CLIENTS, scoring_extra(args))
        try:
            asyncio.run(closed_loop(port, msgs, CLIENTS, 2))  # warm-up
            rss_before, at_sink = memory_mb(proc.pid), sink_count(sink_port)
            with GcPauses() as pauses:
                lat, split = asyncio.run(fixed_rate(port, msgs, args.rate, args.seconds, args.balance))
            rss_after, at_sink = memory_mb(proc.pid), sink_count(sink_port) - at_sink
        finally:
            proc.terminate()
            proc.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ordered = sorted(ms for _, ms in lat)
    slowest = sorted(lat, key=lambda x: -x[1])[: max(1, len(lat) // 100)]
    return {"connections_per_worker": split, "sent": len(lat),
            "failed": sum(1 for _, ms in lat if ms == float("inf")),
            "answered_250": sum(1 for _, ms in lat if ms != float("inf")), "delivered_at_sink": at_sink,
            "rss_mb_before_after": [rss_before["rss_mb"], rss_after["rss_mb"]],
            "load_generator_longest_gc_ms": round(pauses.longest_ms, 1),
            "p50_ms": round(ordered[len(ordered) // 2], 1), "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 1),
            "max_ms": round(ordered[-1], 1),
            "slowest_1pct_by_folder": dict(collections.Counter(folders[i % len(msgs)] for i, _ in slowest))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=450.0, help="messages/s (about half of the AMD box's peak)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--order", choices=("file", "shuffled"), default="file")
    ap.add_argument("--balance", action="store_true", help="keep an equal number of connections on each worker")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--batch-max", type=int, default=None, help="[scoring] batch_max (default: the config's)")
    ap.add_argument("--batch-wait-ms", type=float, default=None,
                    help="[scoring] batch_wait_ms (default: the config's)")
    ap.add_argument("--models", default="models")
    ap.add_argument("--json", default="bench/out/tail.json")
    args = ap.parse_args()
    test = rows("test")
    order = list(range(len(test)))
    if args.order == "shuffled":
        random.Random(0).shuffle(order)
    msgs, folders = [wire(test[i].raw()) for i in order], [test[i].folder for i in order]
    tmp = Path(tempfile.mkdtemp(prefix="spamd-tail-"))
    models = tmp / "models"
    shutil.copytree(args.models, models)
    sink, sink_port = start_sink()
    try:
        runs = []
        for _ in range(args.runs):
            runs.append(run(models, sink_port, msgs, folders, args))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        sink.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"machine": machine(), "rate": args.rate, "seconds": args.seconds, "order": args.order,
              "balance": args.balance, "scoring_overrides": scoring_extra(args) or None, "runs": runs}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
