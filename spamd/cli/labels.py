"""`spamd labels`: how many messages are labelled, per label, user and source."""

from __future__ import annotations

from collections import Counter

import click
from sqlalchemy.orm import Session

from spamd.cli import config_option, get_config
from spamd.db import labels
from spamd.db.store import opened


@click.command("labels")
@config_option
@click.pass_context
def command(ctx: click.Context) -> None:
    """Count labelled messages per label, user and source."""
    with opened(get_config(ctx).database_url) as engine, Session(engine) as session:
        rows = labels.counts(session)
    totals: Counter[str] = Counter()
    click.echo(f"{'label':6} {'user':24} {'source':6} {'count':>8}")
    for label, user, source, n in rows:
        click.echo(f"{label:6} {user[:24]:24} {source:6} {n:>8}")
        totals[label] += n
    click.echo("total: " + ", ".join(f"{totals[k]} {k}" for k in labels.LABELS) + f", {sum(totals.values())} in all")
