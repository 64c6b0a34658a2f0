"""Scoring speed, raw bytes → Verdict: messages/s and per-message latency p50/p99 at batch 1
and batched, with 1 and 2 torch threads; the CNN and RNN passes apart; the CPU a message costs
right after the thread slept (as in a daemon below its peak); RSS with both models loaded.

    python -m bench.speed [--model VERSION] [--config config.toml] [--json bench/out/speed.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench.corpus import machine, rows
from spamd.cli.common import load_active
from spamd.config import load_config
from spamd.features import token_ids
from spamd.mail.parse import parse
from spamd.nets.cnn import FusedCNN, TableCNN
from spamd.nets.rnn import FusedRNN
from spamd.scorer import RnnPending, Scorer, ScoringPolicy, pad


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(scorer: Scorer, raws: list[bytes], batch: int) -> dict[str, float]:
    scorer.score(raws[:batch])  # warm-up: first calls allocate
    per_msg: list[float] = []
    started = time.perf_counter()
    for i in range(0, len(raws), batch):
        chunk = raws[i : i + batch]
        t = time.perf_counter()
        scorer.score(chunk)
        per_msg += [(time.perf_counter() - t) * 1000] * len(chunk)  # each waits for its whole batch
    elapsed = time.perf_counter() - started
    per_msg.sort()
    return {
        "messages_per_s": round(len(raws) / elapsed, 1),
        "latency_p50_ms": round(statistics.median(per_msg), 2),
        "latency_p99_ms": round(per_msg[int(0.99 * (len(per_msg) - 1))], 2),
    }


def best_ms_per_msg(fn: Callable[[], object], messages: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return round(best * 1000 / messages, 3)


@torch.inference_mode()
def passes(scorer: Scorer, raws: list[bytes]) -> dict[str, float]:
    """The two passes apart, one thread, best of 3: `Scorer.read`'s stages before the CNN
    (parsing, and tokenizing the CNN's window); the CNN as trained (TextCNN.forward, padded
    batches) against its inference forms (row by row): FusedCNN (matrix products) and TableCNN
    (sums of a precomputed table's rows, what the daemon runs with `[scoring] cnn_table`); and the
    RNN for the messages the CNN is unsure of: as trained (TextRNN.forward, packed), as FusedRNN
    (torch, both directions as one GRU) and as the scorer's OrtRNN (the GRU in onnxruntime), and
    the scorer's whole RNN step (reading each message's complete ids too), in one pass and one
    message at a time."""
    mails = [parse(raw) for raw in raws]
    out: dict[str, float] = {
        "read: parse, ms/msg": best_ms_per_msg(partial(_each, parse, raws), len(raws)),
        "read: tokenize the CNN's window, ms/msg": best_ms_per_msg(
            partial(_each, partial(token_ids, cfg=scorer.head), mails), len(raws)),
    }
    window = scorer.models.cnn.cfg.window
    ids = [token_ids(mail, scorer.models.tokenizer)[: window + 1] for mail in mails]
    matmuls = FusedCNN(scorer.models.cnn)
    started = time.perf_counter()
    table = TableCNN(scorer.models.cnn)
    out["TableCNN: building its table, s"] = round(time.perf_counter() - started, 2)
    out["TableCNN: its table, MiB"] = TableCNN.size(scorer.models.cnn.cfg) >> 20
    for batch in (1, 32):
        chunks = [ids[i : i + batch] for i in range(0, len(ids), batch)]
        padded = [pad(chunk, window) for chunk in chunks]
        out[f"cnn forward, batch {batch}, ms/msg"] = best_ms_per_msg(partial(_each, scorer.models.cnn, padded),
                                                                    len(ids))
        out[f"FusedCNN, batch {batch}, ms/msg"] = best_ms_per_msg(partial(_each, matmuls, chunks), len(ids))
        out[f"TableCNN, batch {batch}, ms/msg"] = best_ms_per_msg(partial(_each, table, chunks), len(ids))
    del table
    out.update(cnn_arithmetic(matmuls, ids, out["FusedCNN, batch 1, ms/msg"]))
    pending = [p for p in scorer.read(raws) if isinstance(p, RnnPending)]
    out["rnn: messages consulted"] = len(pending)
    padded_rnn = pad([p.ids() for p in pending], scorer.models.rnn.cfg.window)
    singles = [pad([p.ids()], scorer.models.rnn.cfg.window) for p in pending]
    fused = FusedRNN(scorer.models.rnn)
    out["rnn forward (packed), one pass, ms"] = best_ms_per_msg(
        lambda: scorer.models.rnn(padded_rnn, packed=True), 1)
    out["FusedRNN (torch), one pass, ms"] = best_ms_per_msg(lambda: fused(padded_rnn), 1)
    out["FusedRNN (torch), one at a time, ms"] = best_ms_per_msg(partial(_each, fused, singles), 1)
    out["OrtRNN (the scorer's), one pass, ms"] = best_ms_per_msg(lambda: scorer.rnn(padded_rnn), 1)
    # What the scorer's RNN thread does: each message's complete ids read, then its RNN.
    out["consult (ids + OrtRNN), one pass, ms"] = best_ms_per_msg(lambda: scorer.consult(pending), 1)
    out["consult (ids + OrtRNN), one at a time, ms"] = best_ms_per_msg(
        lambda: [scorer.consult([p]) for p in pending], 1)
    return out


def cnn_arithmetic(cnn: FusedCNN, ids: list[list[int]], ms_per_msg: float) -> dict[str, float]:
    """How close `FusedCNN` runs to this core's matrix-product rate: the floating-point work of
    its tap GEMMs (2 · rows · embedding width · columns, each tap k on its message's n - k rows)
    over its measured time, next to what torch's GEMM reaches, one thread, on one message's full
    window in one product (400 × 48 by 48 × 1,056 for the starter CNN) and on a large square
    product (the core's practical peak). If the first is near the second, the network cannot be
    computed much faster in fp32 on this CPU, only made smaller."""
    widest, c = max(cnn.widths), cnn.cfg.embed_dim
    flops = 0
    for row in ids:
        n = max(min(len(row), cnn.cfg.window), widest)
        flops += sum(2 * (n - k) * c * weight.shape[1] for k, _, weight in cnn.taps)
    cols = sum(weight.shape[1] for _, _, weight in cnn.taps)
    window = torch.randn(cnn.cfg.window, c), torch.randn(c, cols)
    square = torch.randn(1024, 1024), torch.randn(1024, 1024)
    gemm = {f"GEMM ({cnn.cfg.window}x{c})·({c}x{cols}), one thread, GFLOP/s": (window, 200),
            "GEMM (1024x1024)·(1024x1024), one thread, GFLOP/s": (square, 5)}
    out = {"FusedCNN, batch 1, GFLOP/s of its tap GEMMs": round(flops / len(ids) / ms_per_msg / 1e6, 1)}
    for label, ((a, b), times) in gemm.items():
        ms = best_ms_per_msg(partial(_repeat, torch.mm, a, b, times=times), times)
        out[label] = round(2 * a.shape[0] * a.shape[1] * b.shape[1] / ms / 1e6, 1)
    return out


def _repeat(fn: Callable[..., object], *args: object, times: int) -> None:
    # Each result is dropped before the next call, as in a forward pass: keeping them all would
    # time fresh memory's page faults (a 400 x 1,056 product read 33 GFLOP/s that way, not 90).
    for _ in range(times):
        fn(*args)


def idle_gaps(scorer: Scorer, raws: list[bytes], gap_ms: float = 8.0, rounds: int = 2) -> dict[str, float]:
    """`Scorer.read`'s CPU time per message (this thread's), one message at a time, back to back
    and with the thread asleep `gap_ms` before each, in turn. A daemon below its peak sleeps
    between messages, and on the box of bench/README.md's "Why a message costs more in the daemon
    than in process" a read right after a sleep costs more (why is not measured there: that VM has
    no performance counters)."""
    out: dict[str, list[float]] = {"back to back": [], f"after {gap_ms:g} ms asleep": []}
    for _ in range(rounds):
        for label, gap in zip(out, (0.0, gap_ms / 1000), strict=True):
            cpu = 0.0
            for raw in raws:
                if gap:
                    time.sleep(gap)
                t = time.thread_time()
                scorer.read([raw])
                cpu += time.thread_time() - t
            out[label].append(round(cpu * 1000 / len(raws), 3))
    return {f"read CPU ms/msg, {label}": min(v) for label, v in out.items()}


def _each(fn: Callable[[Any], object], items: Sequence[Any]) -> list[object]:
    return [fn(item) for item in items]


def parse_times(models_tok: object) -> dict[str, float]:
    """Raw bytes → token ids for every corpus message: mean and worst, in ms."""
    times = []
    for r in rows():
        raw = r.raw()
        t = time.perf_counter()
        token_ids(parse(raw), models_tok)  # type: ignore[arg-type]
        times.append((time.perf_counter() - t) * 1000)
    return {"messages": len(times), "mean_ms": round(statistics.mean(times), 3), "max_ms": round(max(times), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None)
    ap.add_argument("--config", default=None)
    ap.add_argument("--json", default="bench/out/speed.json")
    ap.add_argument("--rule", default="uncertain")
    args = ap.parse_args()
    base_rss = rss_mb()
    cfg = load_config(args.config)
    models = load_active(cfg, args.model)
    raws = [r.raw() for r in rows("test")]
    # The CNN as the daemon runs it: with the config's [scoring] cnn_table.
    scorer = Scorer(models, ScoringPolicy(rnn_rule=args.rule), cnn_table=cfg.scoring.cnn_table)  # type: ignore[arg-type]
    results = {}
    torch.set_num_threads(1)
    results["parse+tokenize, whole corpus"] = parse_times(models.tokenizer)
    print(results, flush=True)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for batch in (1, 32):
            results[f"threads={threads} batch={batch}"] = run(scorer, raws, batch)
            print(f"threads={threads} batch={batch}: {results[f'threads={threads} batch={batch}']}", flush=True)
    rss_after = rss_mb()  # before the passes below, which hold every message's ids
    torch.set_num_threads(1)
    results["passes, threads=1"] = passes(scorer, raws)
    results["idle gaps, threads=1, first 400 messages, best of 2"] = idle_gaps(scorer, raws[:400])
    out = {"machine": machine(), "model": models.version, "rnn_rule": args.rule, "messages": len(raws),
           "cnn_table": cfg.scoring.cnn_table,
           "rss_mb_before_models": round(base_rss, 1), "rss_mb_after": round(rss_after, 1), "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
