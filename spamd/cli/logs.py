"""`spamd logs [FILTERS]`: find score-log rows; `spamd logs purge --older-than 30d`: delete old ones."""

from __future__ import annotations

import csv
import json
import re
import sys
from datetime import UTC, datetime, timedelta

import click
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from spamd.cli import config_option, get_config
from spamd.cli.common import MAX_LIMIT
from spamd.cli.when import Duration, When
from spamd.db import scorelogs
from spamd.db.scorelogs import LogQuery
from spamd.db.store import opened, unreachable
from spamd.scorelog import ScoreLogRow

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
COLUMNS = ("time", "id", "verdict", "score", "action", "sender", "recipients", "message_id", "model_version",
           "latency_ms", "long_context")


@click.group("logs", invoke_without_command=True)
@click.option("--since", type=When(), help="From this time: a duration ago (90m, 2h, 7d) or an ISO time (UTC).")
@click.option("--until", type=When(), help="Up to (not including) this time; same forms as --since.")
@click.option("--verdict", type=click.Choice(["spam", "ham", "unknown"]))
@click.option("--action", help="tagged, passed, rejected, tempfailed, failed-open ...")
@click.option("--sender", help="Envelope sender, exactly as logged (case included, which keeps it on its index); "
              "with * or ?, a glob, whatever the case.")
@click.option("--rcpt", help="A recipient matching this glob, whatever the case, e.g. '*@example.org'.")
@click.option("--min-score", type=float)
@click.option("--max-score", type=float)
@click.option("--long-context", is_flag=True, help="Only verdicts the RNN's long-range reading changed.")
@click.option("--model", help="Model version.")
@click.option("--message-id", help="Message-ID, exactly as in the header (with <>).")
@click.option("--queue-id", help="The MTA's queue id (as its log names it), where the MTA sent XFORWARD.")
@click.option("--limit", type=click.IntRange(min=0, max=MAX_LIMIT), default=100, show_default=True,
              help="Most rows; 0: all.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="json: one object per line.")
@config_option
@click.pass_context
def command(ctx: click.Context, fmt: str, **filters: object) -> None:
    """Show score-log rows, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    url = get_config(ctx).database_url
    with opened(url) as engine, Session(engine) as session:
        try:
            rows = scorelogs.find(session, LogQuery(**filters))  # type: ignore[arg-type]
        except SQLAlchemyError as exc:
            raise unreachable(url, exc) from exc
    {"table": print_table, "json": print_json, "csv": print_csv}[fmt](rows)
    limit = filters.get("limit")
    if isinstance(limit, int) and limit and len(rows) == limit:  # an export cut short must say so
        click.echo(f"spamd: the newest {limit} rows shown; more may match (--limit 0: all)", err=True)


@command.command("purge")
@click.option("--older-than", type=Duration(), required=True, help="Age of the rows to delete, e.g. 30d.")
@config_option
@click.pass_context
def purge_command(ctx: click.Context, older_than: timedelta) -> None:
    """Delete score-log rows older than the given age (what the retention job does daily)."""
    url = get_config(ctx).database_url
    try:
        before = datetime.now(UTC) - older_than
    except OverflowError:  # older than the calendar: no row is
        before = datetime.min.replace(tzinfo=UTC)
    with opened(url) as engine, Session(engine) as session:
        try:
            with session.begin():
                n = scorelogs.purge(session, before)
        except SQLAlchemyError as exc:
            raise unreachable(url, exc) from exc
    click.echo(f"purged {n} score-log rows older than {before:%Y-%m-%d %H:%M:%S} UTC")


def values(row: ScoreLogRow) -> dict[str, object]:
    return {
        "time": row.time.isoformat(), "id": row.id, "verdict": row.verdict, "score": row.score,
        "action": row.action, "sender": row.sender, "recipients": list(row.recipients),
        "message_id": row.message_id, "model_version": row.model_version, "latency_ms": row.latency_ms,
        "long_context": row.long_context, "cnn_score": row.cnn_score, "rnn_score": row.rnn_score,
        "client_addr": row.client_addr, "queue_id": row.queue_id, "size": row.size, "error": row.error,
        "extra": row.extra,
    }


def print_json(rows: list[ScoreLogRow]) -> None:
    for row in rows:
        click.echo(json.dumps(values(row), ensure_ascii=False))


def print_csv(rows: list[ScoreLogRow]) -> None:
    out = csv.writer(sys.stdout)
    fields = [*COLUMNS, "cnn_score", "rnn_score", "client_addr", "helo", "client_name", "queue_id", "size", "error"]
    out.writerow(fields)
    for row in rows:
        data = values(row)
        data["recipients"] = " ".join(row.recipients)
        data.update({key: row.extra.get(key, "") for key in ("helo", "client_name")})
        out.writerow(["" if data[f] is None else data[f] for f in fields])


def print_table(rows: list[ScoreLogRow]) -> None:
    if not rows:
        click.echo("no matching score-log rows")
        return
    click.echo(f"{'time (UTC)':19} {'id':20} {'verdict':7} {'score':>5} {'action':11} {'ms':>6} "
               f"{'sender':28} {'recipients':28} {'model':16} message-id")
    for r in rows:
        score = "-" if r.score is None else f"{r.score:.3f}"
        more = len(r.recipients) - 1
        rcpt = (r.recipients[0] if r.recipients else "") + (f" +{more}" if more > 0 else "")
        verdict = r.verdict + ("*" if r.long_context else "")
        click.echo(f"{r.time:%Y-%m-%d %H:%M:%S} {r.id:20} {verdict:7} {score:>5} {_shown(r.action):11} "
                   f"{r.latency_ms:6.1f} {_cut(_shown(r.sender), 28):28} {_cut(_shown(rcpt), 28):28} "
                   f"{_cut(r.model_version or '-', 16):16} {_shown(r.message_id)}")
    click.echo(f"({len(rows)} rows; * = long-range context changed the verdict)")


def _shown(text: str) -> str:
    """Text a sender wrote (a Message-ID, an address), safe on a terminal: control characters
    (an escape sequence could rewrite the operator's screen) are shown as "?"."""
    return _CONTROL.sub("?", text)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
