"""What `[scoring] cnn_table` buys under load: three daemons up at once, the CNN with its table,
without it (`FusedCNN`), and the null proxy, their closed-loop peaks taken in turn.

    python -m bench.cnn_table [--rounds 12] [--seconds 5] [--clients 32] [--workers 2]
                              [--json bench/out/cnn_table.json]

`bench/load --cnn-table false` measures the other setting in a run of its own, minutes away from
the default's; on a shared box whose speed moves by a quarter within minutes that difference is
noise-sized. Here each round takes one peak of each daemon back to back, in an order that rotates
(and reverses every other round) so that a steady drift cancels, and reports per round the ratio
of the two scoring daemons' peaks and each one's ratio to the null proxy, with their medians. The
messages are the SPLIT test rows, shuffled (seed 0), as `bench/load --order shuffled` sends them;
the sink counts every message, so the run also checks that each message answered 250 arrived once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.corpus import machine, rows
from bench.load import closed_loop, sink_count, start_sink, start_spamd, stop_daemons, warm_up, wire
from spamd.config import DeliveryConfig

DAEMONS = {"table": (True, "cnn_table = true"), "no_table": (True, "cnn_table = false"), "null": (False, "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=5.0, help="each peak's length")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--models", default="models", help="models directory (its ACTIVE version is used)")
    ap.add_argument("--json", default="bench/out/cnn_table.json")
    args = ap.parse_args()
    msgs = [wire(r.raw()) for r in rows("test")]
    random.Random(0).shuffle(msgs)
    tmp = Path(tempfile.mkdtemp(prefix="spamd-cnn-table-"))
    models_dir = tmp / "models"
    shutil.copytree(args.models, models_dir)
    sink, sink_port = start_sink()
    names = list(DAEMONS)
    peaks: dict[str, list[float]] = {name: [] for name in names}
    answered = 0
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        for scoring, extra in DAEMONS.values():
            procs.append(start_spamd(tmp, models_dir, sink_port, args.workers, scoring,
                                     DeliveryConfig().pool_size, extra))
        before = sink_count(sink_port)
        answered = warm_up(procs, msgs, args.clients)
        for k in range(args.rounds):
            order = names[k % len(names):] + names[: k % len(names)]
            for name in order[::-1] if k % 2 else order:
                peak = asyncio.run(closed_loop(procs[names.index(name)][1], msgs, args.clients, args.seconds))
                answered += int(peak["sent"])
                peaks[name].append(peak["messages_per_s"])
            print(k, {name: peaks[name][-1] for name in names}, flush=True)
        delivered = sink_count(sink_port) - before
    finally:
        stop_daemons(procs)
        sink.terminate()
        shutil.rmtree(tmp, ignore_errors=True)

    def ratios(a: str, b: str) -> list[float]:
        return [round(x / y, 3) for x, y in zip(peaks[a], peaks[b], strict=True)]

    table_over = ratios("table", "no_table")
    out = {"machine": machine(), "workers": args.workers, "clients": args.clients, "seconds": args.seconds,
           "peaks_msgs_per_s": peaks,
           "table_over_no_table": table_over, "table_over_no_table_median": round(statistics.median(table_over), 3),
           "rounds_table_faster": sum(r > 1 for r in table_over),
           "ratio_to_null_median": {name: round(statistics.median(ratios(name, "null")), 4)
                                    for name in ("table", "no_table")},
           "answered_250": answered, "delivered_at_sink": delivered}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
