"""Score-log store speed: rows/s through the daemon's writer, and `spamd logs` / `spamd stats` latency
at N rows (default 1,000,000, spread over 30 days as retention keeps them), on SQLite and PostgreSQL.

    python -m bench.store [--rows 1000000] [--backend sqlite|postgresql|both]
                          [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--json bench/out/store.json]

Each query is run in-process through the real command (`spamd logs ...` via click), so a timing
includes opening the store and checking its schema, but not Python's start-up; that is timed
once separately with a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import create_engine, make_url, text

from bench.corpus import machine
from spamd.cli import main as spamd_main
from spamd.db import migrate
from spamd.db.engine import make_engine
from spamd.db.spool import Spool
from spamd.db.writer import ScoreLogWriter
from spamd.scorelog import ScoreLogRow, new_log_id

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
CHUNK = 50_000
REPEAT = 21
DAYS = 30
QUERIES = [
    ["logs", "--since", "1h", "--verdict", "spam", "--limit", "50"],
    ["logs", "--since", "1h", "--limit", "50"],
    ["logs", "--since", "1d", "--verdict", "spam", "--limit", "50"],
    ["logs", "--verdict", "spam", "--limit", "50"],
    ["logs", "--sender", "sender17@domain3.example", "--since", "7d", "--limit", "50"],
    ["logs", "--rcpt", "*@site4.example", "--since", "1h", "--limit", "50"],
    ["logs", "--long-context", "--since", "1d", "--limit", "50"],
    ["logs", "--message-id", "MESSAGE_ID"],
    ["logs", "--since", "1h", "--format", "json", "--limit", "0"],
    ["stats", "--since", "1h"],
    ["stats", "--since", "1d"],
]


def fake_rows(n: int, start: datetime, step: timedelta, rnd: random.Random) -> Iterator[ScoreLogRow]:
    """Plausible traffic, in the order it arrives: ~30% spam, 2% long-context, 20k senders, 2k recipients."""
    for i in range(n):
        t = start + step * i
        spam = rnd.random() < 0.3
        score = rnd.uniform(0.8, 1.0) if spam else rnd.uniform(0.0, 0.5)
        yield ScoreLogRow(
            id=new_log_id(int(t.timestamp() * 1000)), time=t, message_id=f"<{secrets.token_hex(8)}@mx.example>",
            sender=f"sender{rnd.randrange(1000)}@domain{rnd.randrange(20)}.example",
            recipients=tuple(f"user{rnd.randrange(200)}@site{rnd.randrange(10)}.example"
                             for _ in range(1 + (rnd.random() < 0.1))),
            client_addr=f"10.0.{rnd.randrange(256)}.{rnd.randrange(256)}", size=rnd.randrange(1000, 200_000),
            cnn_score=score, rnn_score=score if rnd.random() < 0.2 else None, score=score,
            verdict="spam" if spam else "ham", action="tagged" if spam else "passed",
            long_context=rnd.random() < 0.02, model_version=rnd.choice(["20260101T030000Z", "20260201T030000Z"]),
            latency_ms=rnd.lognormvariate(1.5, 0.6),
        )


def fill(url: str, n: int, spool: Path) -> dict[str, float]:
    """Write n rows through ScoreLogWriter (batch 500, as configured by default); rows/s overall and at the end."""
    engine = make_engine(url)
    writer = ScoreLogWriter(engine, Spool(spool), flush_interval=0.5, batch_size=500).start()
    # n rows over the last DAYS days, oldest first, as a daemon would have written them.
    rnd, step, spent, last = random.Random(7), timedelta(days=DAYS) / n, 0.0, 0.0
    start = datetime.now(UTC) - timedelta(days=DAYS)
    for done in range(0, n, CHUNK):
        rows = list(fake_rows(min(CHUNK, n - done), start + step * done, step, rnd))  # untimed: only the writer is
        started = time.perf_counter()
        for row in rows:
            writer.submit(row)
        writer.flush()  # waits for the thread's batch in progress, then writes what is left
        last = time.perf_counter() - started
        spent += last
        print(f"  {done + len(rows):>9} rows, {len(rows) / last:,.0f} rows/s", file=sys.stderr)
    writer.close()
    engine.dispose()
    assert writer.spooled == 0 and writer.dropped == 0, "the writer spooled or dropped rows"
    return {"rows_per_s": round(n / spent), "rows_per_s_last_chunk": round(min(CHUNK, n) / last)}


def time_queries(config: Path, message_id: str) -> dict[str, dict[str, float]]:
    runner, out = CliRunner(), {}
    for args in QUERIES:
        args = [message_id if a == "MESSAGE_ID" else a for a in args]
        times = []
        for _ in range(REPEAT):
            started = time.perf_counter()
            result = runner.invoke(spamd_main, ["--config", str(config), *args])
            times.append((time.perf_counter() - started) * 1000)
            assert result.exit_code == 0, result.output
        rows = len(result.stdout.splitlines())
        out["spamd " + " ".join(args)] = {"p50_ms": round(statistics.median(times), 1),
                                          "max_ms": round(max(times), 1), "output_lines": rows}
        print(f"  {statistics.median(times):8.1f} ms  spamd {' '.join(args)}", file=sys.stderr)
    return out


def some_message_id(url: str) -> str:
    engine = make_engine(url)
    with engine.connect() as conn:
        mid = conn.execute(text("SELECT message_id FROM score_logs ORDER BY time DESC LIMIT 1 OFFSET 5000")).scalar()
    engine.dispose()
    return str(mid)


def cold_cli(config: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "spamd", "--config", str(config), *QUERIES[0]], check=True,
                   capture_output=True)
    return round((time.perf_counter() - started) * 1000, 1)


def bench(url: str, n: int, work: Path) -> dict[str, object]:
    migrate.upgrade(url)
    config = work / "config.toml"
    config.write_text(f'[database]\nurl = "{url}"\n')
    print(f"{make_url(url).get_backend_name()}: writing {n} rows", file=sys.stderr)
    writer = fill(url, n, work / "spool")
    if make_url(url).get_backend_name() == "postgresql":
        _analyze(url)
    return {"writer": writer, "queries": time_queries(config, some_message_id(url)),
            "cli_with_python_startup_ms": cold_cli(config)}


def _analyze(url: str) -> None:
    # Autovacuum would do this within a minute of a bulk load; the benchmark does not wait for it.
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("ANALYZE score_logs"))
    engine.dispose()


def with_pg_database(admin_url: str, n: int, work: Path) -> dict[str, object]:
    name = f"spamd_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        return bench(make_url(admin_url).set(database=name).render_as_string(hide_password=False), n, work)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--pg", default=os.environ.get("SPAMD_TEST_POSTGRES_URL", PG_DEFAULT))
    ap.add_argument("--json", default="bench/out/store.json")
    args = ap.parse_args()
    results: dict[str, object] = {"machine": machine(), "rows": args.rows, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="spamd-bench-") as tmp:
        if args.backend in ("sqlite", "both"):
            (Path(tmp) / "sqlite").mkdir()
            results["sqlite"] = bench(f"sqlite:///{tmp}/sqlite/spamd.db", args.rows, Path(tmp) / "sqlite")
        if args.backend in ("postgresql", "both"):
            (Path(tmp) / "pg").mkdir()
            results["postgresql"] = with_pg_database(args.pg, args.rows, Path(tmp) / "pg")
    results["load_after"] = os.getloadavg()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
