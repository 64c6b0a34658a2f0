"""`spamd models list | activate VERSION | rollback`: the registry of model versions."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy.orm import Session

from spamd import registry
from spamd.cli import config_option, get_config
from spamd.db import registry as repo
from spamd.db.store import opened


@click.group("models")
def command() -> None:
    """Model versions: which one is active, their metrics, and switching between them."""


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
    """Go back to the version that was active before the current one."""
    cfg = get_config(ctx)
    with opened(cfg.database_url) as engine, Session(engine) as s, s.begin():
        registry.seed(s, cfg.models_dir)
        version = registry.rollback(s, cfg.models_dir)
    click.echo(f"active: {version}")
