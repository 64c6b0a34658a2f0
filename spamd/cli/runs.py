"""`spamd runs`: the history of the retrain job, newest first."""

from __future__ import annotations

import json

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from spamd.cli import config_option, get_config
from spamd.cli.common import MAX_LIMIT
from spamd.db.schema import TrainingRun
from spamd.db.store import opened


@click.command("runs")
@click.option("--limit", type=click.IntRange(min=1, max=MAX_LIMIT), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run, with every metric.")
@config_option
@click.pass_context
def command(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Training runs: when, outcome, versions, labels, holdout AUC of candidate vs active, time, error."""
    url = get_config(ctx).database_url
    with opened(url) as engine, Session(engine) as s:
        runs = list(s.scalars(select(TrainingRun).order_by(TrainingRun.started_at.desc()).limit(limit)))
        lines = [_json(r) if as_json else _line(r) for r in runs]
    if not as_json:
        click.echo(f"{'id':>4} {'started (UTC)':<16} {'outcome':<9} {'candidate':<17} {'active':<17} {'labels':>6} "
                   f"{'auc':>13} {'secs':>6}  error")
    for line in lines:
        click.echo(line)


def _line(r: TrainingRun) -> str:
    cand, act = (r.metrics.get("candidate") or {}), (r.metrics.get("active") or {})
    auc = f"{_num(cand.get('auc'))}/{_num(act.get('auc'))}" if cand else "-"
    secs = (r.metrics.get("seconds") or {}).get("total", "-")
    return (f"{r.id:>4} {r.started_at:%Y-%m-%d %H:%M} {r.outcome:<9} {r.candidate_version or '-':<17} "
            f"{r.active_version or '-':<17} {r.labels:>6} {auc:>13} {secs:>6}  {r.error}")


def _num(v: object) -> str:
    return "-" if not isinstance(v, float | int) else f"{v:.4f}"


def _json(r: TrainingRun) -> str:
    return json.dumps({"id": r.id, "started_at": r.started_at.isoformat(), "outcome": r.outcome,
                       "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                       "candidate": r.candidate_version, "active": r.active_version, "labels": r.labels,
                       "metrics": r.metrics, "error": r.error})
