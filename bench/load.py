"""End-to-end load on `spamd serve`: N SMTP clients send the SPLIT test messages through it to a sink.

    python -m bench.load [--seconds 10] [--clients 32] [--workers 1,2] [--order file|shuffled]
                         [--pairs 0] [--pair-seconds 5] [--models DIR] [--rnn-rule RULE] [--cnn-table BOOL]
                         [--json bench/out/load.json]

For each worker count, the same daemon runs twice: scoring on, and scoring off (the null
proxy, `[scoring] enabled = false`). Each run measures the peak (closed loop: every client
sends its next message as soon as the last one is answered) and then the latency at half of
that peak (open loop: messages arrive at a fixed rate, latency counted from the arrival, so
queueing shows). "Added latency" is the proxy's percentile minus that of the sink alone at
the same rate. The sink (below, or Postfix's `smtp-sink` when installed) only counts, so
the counts prove every message arrived exactly once. RSS is summed over the daemon's
processes (PSS counts their shared pages once). The daemon's CPU at the peak is also given by
thread (spamd names its threads for the OS: the workers' event loops, spamd-score, spamd-rnn,
spamd-scorelog, spamd-io), which says where a message's CPU goes. Where Debian's postfix package is installed,
each configuration is also driven by `smtp-source` into `smtp-sink` (synthetic 5 kB messages,
both in C). The load generator, the sink and the daemon share the machine's cores.

`--pairs N` then measures the ratio again from N short peaks of each daemon taken in turn
(`alternating_pairs`), for its spread on a box whose speed moves from minute to minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.corpus import machine, rows
from spamd.config import DeliveryConfig

FROM, TO = b"MAIL FROM:<bench@example.org>\r\n", b"RCPT TO:<user@example.net>\r\n"


def wire(raw: bytes) -> bytes:
    """A message as sent after DATA: CRLF line ends, dot-stuffed, with the final dot line."""
    body = re.sub(rb"\r?\n", b"\r\n", raw)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", body) + b".\r\n"


# ---------------------------------------------------------------------------------- the sink


class SinkProtocol(asyncio.Protocol):
    """A minimal SMTP sink: accepts everything, counts messages; `XCOUNT` answers the count."""

    count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.buf, self.in_data, self.scanned = b"", False, 0
        self.t.write(b"220 sink ESMTP\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n", self.scanned)
                if end < 0:
                    self.scanned = max(0, len(self.buf) - 4)  # large messages: never rescan
                    return
                self.buf, self.in_data, self.scanned = self.buf[end + 5 :], False, 0
                SinkProtocol.count += 1
                self.t.write(b"250 2.0.0 Ok: queued\r\n")  # type: ignore[attr-defined]
                continue
            line, sep, rest = self.buf.partition(b"\r\n")
            if not sep:
                return
            self.buf = rest
            self.command(line[:4].upper())

    def command(self, verb: bytes) -> None:
        replies = {b"EHLO": b"250-sink\r\n250 8BITMIME\r\n", b"DATA": b"354 go\r\n", b"QUIT": b"221 bye\r\n",
                   b"XCOU": f"250 {SinkProtocol.count}\r\n".encode()}
        self.t.write(replies.get(verb, b"250 2.0.0 Ok\r\n"))  # type: ignore[attr-defined]
        if verb == b"DATA":
            self.buf, self.in_data = b"\r\n" + self.buf, True  # so a message "." right away is found
        elif verb == b"QUIT":
            self.t.close()


async def _sink(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(SinkProtocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def start_sink() -> tuple[subprocess.Popen[bytes], int]:
    """The counting sink in a process of its own, listening: (the process, its port)."""
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-m", "bench.load", "--sink", str(port)])
    wait_smtp(port, sink)
    return sink, port


def sink_count(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as s:
        f = s.makefile("rwb")
        f.readline()
        f.write(b"XCOUNT\r\n")
        f.flush()
        n = int(f.readline().split()[1])
        f.write(b"QUIT\r\n")
        f.flush()
        return n


# ------------------------------------------------------------------------------ the clients


class Client:
    """One SMTP connection sending messages one after another (as an MTA's delivery agent does)."""

    async def open(self, port: int) -> Client:
        self.r, self.w = await asyncio.open_connection("127.0.0.1", port)
        await self.reply()
        self.w.write(b"EHLO bench\r\n")
        while (await self.r.readline())[3:4] == b"-":
            pass
        return self

    async def reply(self) -> bytes:
        line = await self.r.readline()
        while line[3:4] == b"-":
            line = await self.r.readline()
        return line

    async def send(self, data: bytes) -> bool:
        for cmd, want in ((FROM, b"2"), (TO, b"2"), (b"DATA\r\n", b"3")):
            self.w.write(cmd)
            if not (await self.reply()).startswith(want):
                self.w.write(b"RSET\r\n")
                await self.reply()
                return False
        self.w.write(data)
        return (await self.reply()).startswith(b"250")

    async def close(self) -> None:
        self.w.write(b"QUIT\r\n")
        await self.reply()
        self.w.close()


async def closed_loop(port: int, msgs: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    """Every client sends back to back for `seconds`: the peak rate."""
    conns = [await Client().open(port) for _ in range(clients)]
    ok = failed = 0
    deadline = time.perf_counter() + seconds

    async def run(i: int, c: Client) -> None:
        nonlocal ok, failed
        n = i
        while time.perf_counter() < deadline:
            if await c.send(msgs[n % len(msgs)]):
                ok += 1
            else:
                failed += 1
            n += clients

    started = time.perf_counter()
    await asyncio.gather(*(run(i, c) for i, c in enumerate(conns)))
    elapsed = time.perf_counter() - started
    for c in conns:
        await c.close()
    return {"sent": ok, "failed": failed, "messages_per_s": round(ok / elapsed, 1)}


async def open_loop(port: int, msgs: list[bytes], rate: float, seconds: float, clients: int) -> dict[str, float]:
    """Messages arrive at `rate`/s; each takes a free connection. Latency: arrival → 250."""
    free: asyncio.Queue[Client] = asyncio.Queue()
    for _ in range(clients):
        free.put_nowait(await Client().open(port))
    lat: list[float] = []
    failed = 0

    async def one(data: bytes, arrival: float) -> None:
        nonlocal failed
        c = await free.get()
        if await c.send(data):
            lat.append((time.perf_counter() - arrival) * 1000)
        else:
            failed += 1
        free.put_nowait(c)

    start, tasks, n = time.perf_counter(), [], int(rate * seconds)
    for i in range(n):
        arrival = start + i / rate
        await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
        tasks.append(asyncio.create_task(one(msgs[i % len(msgs)], arrival)))
    await asyncio.gather(*tasks)
    while not free.empty():
        await free.get_nowait().close()
    lat.sort()
    return {"rate": round(rate, 1), "sent": len(lat), "failed": failed,
            "p50_ms": round(lat[len(lat) // 2], 2), "p99_ms": round(lat[int(0.99 * (len(lat) - 1))], 2)}


# ----------------------------------------------------------------------------- the daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_smtp(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answers SMTP on port {port}")


def start_spamd(tmp: Path, models_dir: Path, sink_port: int, workers: int, scoring: bool,
                pool: int, extra: str = "") -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    run_dir = Path(tempfile.mkdtemp(dir=tmp))
    cfg = run_dir / "spamd.toml"
    cfg.write_text(f'[smtp]\nlisten = "127.0.0.1:{port}"\nworkers = {workers}\n'
                   f'[delivery]\nurl = "smtp://127.0.0.1:{sink_port}"\npool_size = {pool}\n'
                   f'[scoring]\nenabled = {str(scoring).lower()}\nmodels_dir = "{models_dir}"\n'
                   f'{extra}\n[database]\nurl = "sqlite:///spamd.db"\n')
    proc = subprocess.Popen([sys.executable, "-m", "spamd", "serve", "--config", str(cfg)], cwd=run_dir)
    wait_smtp(port, proc)
    return proc, port


def scoring_extra(args: argparse.Namespace) -> str:
    """[scoring] lines the run overrides (none: the config's defaults)."""
    lines = [f"batch_max = {args.batch_max}" if args.batch_max else "",
             f"batch_wait_ms = {args.batch_wait_ms}" if args.batch_wait_ms is not None else "",
             f'rnn_rule = "{args.rnn_rule}"' if args.rnn_rule else "",
             f"cnn_table = {args.cnn_table}" if args.cnn_table else ""]
    return "\n".join(line for line in lines if line)


def tree(pid: int) -> list[int]:
    """A process and its children (the daemon's workers)."""
    pids = [pid]
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    pids.append(int(p.name))
            except (OSError, ValueError):
                continue
    return pids


def memory_mb(pid: int) -> dict[str, float]:
    """RSS summed over the daemon's processes, and PSS (shared pages such as torch's counted once)."""
    out = {"rss_mb": 0.0, "pss_mb": 0.0}
    for p in tree(pid):
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
            key = {"Rss:": "rss_mb", "Pss:": "pss_mb"}.get(line.split()[0])
            if key:
                out[key] += int(line.split()[1]) / 1024
    return {k: round(v, 1) for k, v in out.items()}


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes."""
    return sum(_stat_cpu_s(Path(f"/proc/{p}/stat")) for p in pids)


def _stat_cpu_s(stat: Path) -> float:
    """User + system CPU seconds in a /proc stat file (a process's or a thread's); 0 if it is gone."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_s(pids: list[int]) -> dict[str, float]:
    """CPU seconds used so far by these processes' threads, summed by thread name (spamd names
    its threads for the OS: spamd-worker-N, spamd-score, spamd-rnn, spamd-scorelog...; a worker's
    number is dropped, so both workers' event loops add up under "spamd-worker")."""
    out: dict[str, float] = {}
    for p in pids:
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                name = re.sub(r"-\d+$", "", (task / "comm").read_text().strip())
            except OSError:
                continue
            out[name] = out.get(name, 0.0) + _stat_cpu_s(task / "stat")
    return out


def peak_with_cpu(port: int, msgs: list[bytes], clients: int, seconds: float, daemon: list[int],
                  sink: int) -> tuple[dict[str, float], dict[str, float]]:
    """The closed-loop peak, with the CPU each party spent per message (robust to a shared
    machine), and the daemon's split by thread: where a message's CPU goes."""
    before = (cpu_s(daemon), cpu_s([sink]), time.process_time())
    threads_before = thread_cpu_s(daemon)
    peak = asyncio.run(closed_loop(port, msgs, clients, seconds))
    spent = (cpu_s(daemon) - before[0], cpu_s([sink]) - before[1], time.process_time() - before[2])
    threads = thread_cpu_s(daemon)
    n = max(1, int(peak["sent"]))
    by_thread = {name: round((s - threads_before.get(name, 0.0)) * 1000 / n, 3) for name, s in sorted(threads.items())}
    return {**peak, "cpu_ms_per_msg_daemon": round(spent[0] * 1000 / n, 3),
            "cpu_ms_per_msg_sink": round(spent[1] * 1000 / n, 3),
            "cpu_ms_per_msg_clients": round(spent[2] * 1000 / n, 3)}, {k: v for k, v in by_thread.items() if v > 0}


def run_config(tmp: Path, models_dir: Path, msgs: list[bytes], args: argparse.Namespace, sink: tuple[int, int],
               workers: int, scoring: bool) -> dict[str, object]:
    sink_port, sink_pid = sink
    proc, port = start_spamd(tmp, models_dir, sink_port, workers, scoring, args.pool, scoring_extra(args))
    try:
        before = sink_count(sink_port)
        warm = asyncio.run(closed_loop(port, msgs, args.clients, 2))  # warm-up: pools, caches, SQLite
        peak, by_thread = peak_with_cpu(port, msgs, args.clients, args.seconds, tree(proc.pid), sink_pid)
        memory = memory_mb(proc.pid)
        half = asyncio.run(open_loop(port, msgs, peak["messages_per_s"] / 2, args.seconds, args.clients))
        delivered = sink_count(sink_port) - before
        answered_250 = int(warm["sent"] + peak["sent"] + half["sent"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return {"workers": workers, "scoring": scoring, "peak": peak,
            "peak_daemon_cpu_ms_per_msg_by_thread": by_thread, "half_peak": half, **memory,
            "answered_250": answered_250, "delivered_at_sink": delivered}


def warm_up(procs: list[tuple[subprocess.Popen[bytes], int]], msgs: list[bytes], clients: int) -> int:
    """A 2-second peak on each daemon (its pools, caches, SQLite); the messages they answered."""
    return sum(int(asyncio.run(closed_loop(port, msgs, clients, 2))["sent"]) for _, port in procs)


def stop_daemons(procs: list[tuple[subprocess.Popen[bytes], int]]) -> None:
    """SIGTERM to every daemon, then wait for them all (they drain side by side)."""
    for proc, _ in procs:
        proc.send_signal(signal.SIGTERM)
    for proc, _ in procs:
        proc.wait(60)


def alternating_pairs(tmp: Path, models_dir: Path, msgs: list[bytes], args: argparse.Namespace, sink_port: int,
                      workers: int) -> dict[str, object]:
    """The ratio to the null proxy from short peaks taken in turn, both daemons up at once.

    A shared box's speed can move by half within minutes, and one peak of each, minutes apart,
    measures that as much as the scoring. Here the two daemons' peaks alternate, `--pairs` times
    (scoring first in even pairs, null first in odd ones, so a steady drift cancels), and each
    pair's ratio comes from two windows `--pair-seconds` apart. The idle daemon waits on its socket.
    """
    procs = [start_spamd(tmp, models_dir, sink_port, workers, scoring, args.pool, scoring_extra(args))
             for scoring in (True, False)]
    try:
        before = sink_count(sink_port)
        answered = warm_up(procs, msgs, args.clients)
        pairs = []
        for k in range(args.pairs):
            rates: dict[bool, float] = {}
            for scoring in ((True, False) if k % 2 == 0 else (False, True)):
                peak = asyncio.run(closed_loop(procs[0 if scoring else 1][1], msgs, args.clients, args.pair_seconds))
                answered += int(peak["sent"])
                rates[scoring] = peak["messages_per_s"]
            pairs.append({"scoring": rates[True], "null": rates[False], "ratio": round(rates[True] / rates[False], 3)})
        delivered = sink_count(sink_port) - before
    finally:
        stop_daemons(procs)
    ratios = sorted(float(p["ratio"]) for p in pairs)
    return {"workers": workers, "pair_seconds": args.pair_seconds, "pairs": pairs,
            # the median proper: of an even number of pairs, the mean of the middle two (before
            # 2026-11-27 09:20 UTC this was the higher of them, which overstated the ratio)
            "ratio_median": round(statistics.median(ratios), 4), "ratio_min": ratios[0], "ratio_max": ratios[-1],
            "answered_250": answered, "delivered_at_sink": delivered}


def postfix_tools(tmp: Path, models_dir: Path, workers: int, scoring: bool, args: argparse.Namespace,
                  messages: int = 3000) -> dict[str, object] | None:
    """Postfix's `smtp-source` → spamd → `smtp-sink` (synthetic 5 kB messages), where the package is installed."""
    if not (shutil.which("smtp-source") and shutil.which("smtp-sink")):
        return None
    sink_port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "root", "-m", "1000", f"127.0.0.1:{sink_port}", "1024"])
    try:
        wait_smtp(sink_port, sink)
        proc, port = start_spamd(tmp, models_dir, sink_port, workers, scoring, args.pool, scoring_extra(args))
        try:
            started = time.perf_counter()
            out = subprocess.run(["smtp-source", "-d", "-s", str(args.clients), "-m", str(messages), "-l", "5000",
                                  "-f", "bench@example.org", "-t", "user@example.net", f"127.0.0.1:{port}"],
                                 capture_output=True, text=True, timeout=600)
            elapsed = time.perf_counter() - started
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    finally:
        sink.terminate()
    return {"workers": workers, "scoring": scoring, "messages": messages, "exit": out.returncode,
            "errors": out.stderr.strip().splitlines()[-3:], "messages_per_s": round(messages / elapsed, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--pool", type=int, default=DeliveryConfig().pool_size, help="[delivery] pool_size")
    ap.add_argument("--batch-max", type=int, default=None, help="[scoring] batch_max (default: the config's)")
    ap.add_argument("--batch-wait-ms", type=float, default=None,
                    help="[scoring] batch_wait_ms (default: the config's)")
    ap.add_argument("--rnn-rule", choices=("never", "uncertain", "long", "always"), default=None,
                    help="[scoring] rnn_rule (default: the config's)")
    ap.add_argument("--cnn-table", choices=("true", "false"), default=None,
                    help="[scoring] cnn_table (default: the config's)")
    ap.add_argument("--models", default="models", help="models directory (its ACTIVE version is used)")
    ap.add_argument("--order", choices=("file", "shuffled"), default="file",
                    help="file: SPLIT.tsv's order, grouped by folder, so the 55 hard_ham test messages "
                         "(large HTML, many sent to the RNN) arrive as one burst; shuffled: mixed, seed 0")
    ap.add_argument("--pairs", type=int, default=0,
                    help="then this many alternating peaks of the scoring and null daemons (the ratio's spread)")
    ap.add_argument("--pair-seconds", type=float, default=5.0, help="each alternating peak's length")
    ap.add_argument("--json", default="bench/out/load.json")
    args = ap.parse_args()
    load_before = os.getloadavg()
    msgs = [wire(r.raw()) for r in rows("test")]
    if args.order == "shuffled":
        random.Random(0).shuffle(msgs)
    tmp = Path(tempfile.mkdtemp(prefix="spamd-load-"))
    models_dir = tmp / "models"
    shutil.copytree(args.models, models_dir)
    sink, sink_port = start_sink()
    try:
        results = {"load_average_before": load_before,
                   **report(tmp, models_dir, msgs, args, (sink_port, sink.pid))}
    finally:
        sink.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def report(tmp: Path, models_dir: Path, msgs: list[bytes], args: argparse.Namespace,
           sink: tuple[int, int]) -> dict[str, object]:
    sink_port = sink[0]
    runs = []
    for workers in (int(w) for w in args.workers.split(",")):
        for scoring in (True, False):
            runs.append(run_config(tmp, models_dir, msgs, args, sink, workers, scoring))
            print(json.dumps(runs[-1]), flush=True)
    direct = {}
    for r in runs:
        if r["scoring"]:
            rate = r["half_peak"]["rate"]  # type: ignore[index]
            direct[str(r["workers"])] = asyncio.run(open_loop(sink_port, msgs, rate, args.seconds, args.clients))
    pairs = [alternating_pairs(tmp, models_dir, msgs, args, sink_port, int(w))
             for w in args.workers.split(",")] if args.pairs > 0 else []
    postfix = [postfix_tools(tmp, models_dir, int(w), scoring, args)
               for w in args.workers.split(",") for scoring in (True, False)]
    for r in runs:
        base = direct.get(str(r["workers"]))
        null = next(n for n in runs if n["workers"] == r["workers"] and not n["scoring"])
        if base and r["scoring"]:
            h = r["half_peak"]
            r["added_p50_ms"] = round(h["p50_ms"] - base["p50_ms"], 2)  # type: ignore[index]
            r["added_p99_ms"] = round(h["p99_ms"] - base["p99_ms"], 2)  # type: ignore[index]
            r["ratio_to_null"] = round(r["peak"]["messages_per_s"] / null["peak"]["messages_per_s"], 2)  # type: ignore[index]
    return {"machine": machine(), "messages": len(msgs), "order": args.order,
            "clients": args.clients, "seconds": args.seconds, "scoring_overrides": scoring_extra(args) or None,
            "runs": runs, "sink_alone_at_same_rate": direct, "alternating_pairs": pairs,
            "smtp_source_to_smtp_sink": [p for p in postfix if p is not None]}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--sink":
        asyncio.run(_sink(int(sys.argv[2])))
    else:
        main()
