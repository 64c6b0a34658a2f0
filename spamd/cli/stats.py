"""`spamd stats [--since]`: what the daemon decided, how sure it was, and how fast — per model version."""

from __future__ import annotations

from datetime import datetime

import click
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from spamd.cli import config_option, get_config
from spamd.cli.when import When
from spamd.db import stats
from spamd.db.stats import LogStats
from spamd.db.store import opened, unreachable

BAR_WIDTH = 40


@click.command("stats")
@click.option("--since", type=When(), help="From this time: a duration ago (90m, 2h, 7d) or an ISO time (UTC).")
@click.option("--until", type=When(), help="Up to this time; same forms as --since.")
@config_option
@click.pass_context
def command(ctx: click.Context, since: datetime | None, until: datetime | None) -> None:
    """Summarise the score logs: verdicts, actions, score histogram, long-context share, latency, models."""
    url = get_config(ctx).database_url
    with opened(url) as engine, Session(engine) as session:
        try:
            result = stats.gather(session, since, until)
        except SQLAlchemyError as exc:
            raise unreachable(url, exc) from exc
    for line in render(result):
        click.echo(line)


def render(s: LogStats) -> list[str]:
    if s.total == 0:
        return ["no score-log rows in this period"]
    lines = [f"messages: {s.total}"]
    lines += ["verdicts: " + _counts(s.verdicts, s.total), "actions:  " + _counts(s.actions, s.total)]
    lines.append(f"long-range context changed the verdict: {s.long_context} ({_pct(s.long_context, s.total)})")
    lines.append(f"latency: p50 {_ms(s.latency_p50_ms)}, p99 {_ms(s.latency_p99_ms)}")
    lines += ["score histogram:", *_histogram(s.histogram)]
    lines.append(f"{'model':24} {'messages':>9} {'spam':>7} {'long-ctx':>8} {'mean ms':>8}")
    for m in s.models:
        lines.append(f"{m.version or '-':24} {m.total:>9} {_pct(m.spam, m.total):>7} {m.long_context:>8} "
                     f"{m.mean_latency_ms:>8.1f}")
    return lines


def _histogram(counts: list[int]) -> list[str]:
    top = max(counts) or 1
    width = 1 / len(counts)
    return [f"  {i * width:.1f}-{(i + 1) * width:.1f} {n:>9} {'#' * round(BAR_WIDTH * n / top)}"
            for i, n in enumerate(counts)]


def _counts(counts: dict[str, int], total: int) -> str:
    return ", ".join(f"{k} {n} ({_pct(n, total)})" for k, n in counts.items())


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else "-"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"
