"""`spamd models list | activate VERSION | rollback | prune`: the registry of model versions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session

from spamd import prune, registry
from spamd.cli import config_option, get_config
from spamd.cli.retrain import EXIT_BUSY
from spamd.db import registry as repo
from spamd.db.store import opened
from spamd.retrain import lock


@click.group("models")
def command() -> None:
    """Model versions: which one is active, their metrics, switching between them, pruning old ones."""


@command.command("list")
@config_option
@click.pass_context
def list_command(ctx: click.Context) -> None:
    """Every registered version, newest first, with its holdout metrics and status."""
    cfg = get_config(ctx)
    with opened(cfg.database_url) as engine, Session(engine) as s, s.begin():
        registry.seed(s, cfg.models_dir)
        rows = [(v.version, v.status, v.created_at, v.trained_on_labels, v.metrics) for v in repo.list_versions(s)]
    click.echo(f"{'version':<20} {'status':<9} {'created (UTC)':<17} {'labels':>6} {'auc':>7} {'fpr':>7} {'fnr':>7}")
    for version, status, created, labels, metrics in rows:
        auc, fpr, fnr = _holdout(metrics)
        click.echo(f"{version:<20} {status:<9} {created:%Y-%m-%d %H:%M} {labels:>6} {auc:>7} {fpr:>7} {fnr:>7}")


def _holdout(metrics: dict[str, Any]) -> tuple[str, str, str]:
    # The holdout of the run that made it; a starter version has only its validation metrics.
    m = metrics.get("holdout") or metrics.get("validation") or {}
    return tuple("-" if m.get(k) is None else f"{m[k]:.4f}" for k in ("auc", "fpr", "fnr"))  # type: ignore[return-value]


@command.command("activate")
@click.argument("version")
@config_option
@click.pass_context
def activate_command(ctx: click.Context, version: str) -> None:
    """Make VERSION the active one; every daemon sharing the database switches to it."""
    cfg = get_config(ctx)
    with opened(cfg.database_url) as engine, Session(engine) as s, s.begin():
        registry.seed(s, cfg.models_dir)
        registry.activate(s, cfg.models_dir, version)
    click.echo(f"active: {version}")


@command.command("rollback")
@config_option
@click.pass_context
def rollback_command(ctx: click.Context) -> None:
    """Activate the newest version older than the active one that was ever active (and not pruned).

    Versions go back by their age, so rollbacks step through older and older versions; to return
    to a particular version, `spamd models activate VERSION`."""
    cfg = get_config(ctx)
    with opened(cfg.database_url) as engine, Session(engine) as s, s.begin():
        registry.seed(s, cfg.models_dir)
        version = registry.rollback(s, cfg.models_dir)
    click.echo(f"active: {version}")


@command.command("prune")
@click.option("--keep", type=click.IntRange(min=0), default=None,
              help="Versions to keep besides the protected ones (default: [training] keep_versions; 0: all).")
@click.option("--dry-run", is_flag=True, help="Print what would be removed, and remove nothing.")
@config_option
@click.pass_context
def prune_command(ctx: click.Context, keep: int | None, dry_run: bool) -> None:
    """Delete old versions' files, in the database and in this host's models directory; their rows stay.

    Never the active version, the one a rollback goes back to, the starter, one active in the
    last hour, or the one this host's models/ACTIVE names. Run it on each host to remove that
    host's copies. Exit status 75 while a retrain runs (it prunes when it is done).
    """
    cfg = get_config(ctx)
    keep = (cfg.training.keep_versions or 0) if keep is None else keep
    with opened(cfg.database_url) as engine:
        with Session(engine) as s, s.begin():
            registry.seed(s, cfg.models_dir)
        held = None if dry_run else lock.acquire(engine, cfg.training.lock_stale_after)
        if held is None and not dry_run:
            click.echo("busy: a retrain is running (it prunes when it is done)")
            sys.exit(EXIT_BUSY)
        try:
            report = prune.prune(engine, cfg.models_dir, keep, dry_run)
        finally:
            if held is not None:
                held.release()
    for line in _report(report, cfg.models_dir):
        click.echo(line)


def _report(report: prune.Report, models_dir: Path) -> list[str]:
    would = "would " if report.dry_run else ""
    lines = [f"{would}prune   {v}  ({'candidate, never active' if status == 'candidate' else 'once active'})"
             for v, status in report.was.items()]
    lines += [f"{would}delete  {models_dir / v}" for v in report.removed]
    lines += [f"keep    {v}  ({why})" for v, why in report.plan.keep.items()]
    lines += [f"left alone, not in the registry: {models_dir / v}" for v in report.unregistered]
    if not report.was and not report.removed:
        lines.append("nothing to prune")
    elif report.dry_run:
        lines.append("dry run: nothing was removed")
    return lines
