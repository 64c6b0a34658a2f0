"""Alembic environment: spamd's metadata, batch mode on SQLite, a connection handed in or made here."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from spamd.db.engine import make_engine
from spamd.db.schema import Base

config = context.config


def run(connection: Connection) -> None:
    # Batch mode rebuilds a SQLite table for the ALTERs SQLite cannot do in place.
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def database_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from spamd.config import load_config

    return load_config().database_url


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # spamd.db.migrate hands in its own connection
        run(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    engine = make_engine(database_url())
    try:
        with engine.connect() as conn:
            run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("spamd's migrations run online only: `spamd db upgrade`")
main()
