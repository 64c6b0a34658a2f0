"""`spamd db upgrade|current`: bring the database schema to this spamd's version, or show where it is."""

from __future__ import annotations

import click
from sqlalchemy.exc import SQLAlchemyError

from spamd.cli import config_option, get_config
from spamd.db import migrate
from spamd.db.engine import display, make_engine, sqlite_path
from spamd.db.store import unreachable, upgrade


@click.group("db")
def command() -> None:
    """Manage the database schema (Alembic migrations)."""


@command.command("upgrade")
@config_option
@click.pass_context
def upgrade_command(ctx: click.Context) -> None:
    """Apply every migration the database lacks (creates the tables on an empty database)."""
    url = get_config(ctx).database_url
    upgrade(url)
    click.echo(f"{display(url)}: schema at {migrate.head()} (head)")


@command.command("current")
@config_option
@click.pass_context
def current_command(ctx: click.Context) -> None:
    """Show the database's schema revision and whether it is at head."""
    url = get_config(ctx).database_url
    path = sqlite_path(url)
    if path is not None and not path.exists():
        click.echo(f"{display(url)}: no database yet (created on first use, or by `spamd db upgrade`)")
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            at = migrate.current(conn)
    except SQLAlchemyError as exc:
        raise unreachable(url, exc) from exc
    finally:
        engine.dispose()
    head = migrate.head()
    state = "at head" if at == head else f"out of date, head is {head}: run `spamd db upgrade`"
    click.echo(f"{display(url)}: schema {at or 'empty'} ({state})")
