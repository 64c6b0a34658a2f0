"""Opening the store for a command or a daemon: reachable, at head, or a clear error saying what to do.

A SQLite file that does not exist yet is the embedded store on first use: it is created
and migrated here. Any other database must be brought to head with `spamd db upgrade`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from spamd.db import migrate
from spamd.db.engine import display, make_engine, sqlite_path
from spamd.errors import SchemaOutOfDate, StoreError

log = logging.getLogger("spamd.db")


def open_store(url: str) -> Engine:
    """An engine on a database whose schema is at head; the caller disposes of it."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        create_embedded(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            migrate.check_at_head(conn)
    except SchemaOutOfDate:
        engine.dispose()
        raise
    except SQLAlchemyError as exc:
        engine.dispose()
        raise unreachable(url, exc) from exc
    return engine


def create_embedded(url: str) -> None:
    log.info("creating the embedded store %s", sqlite_path(url))
    upgrade(url)


def upgrade(url: str) -> None:
    """Apply every migration not yet applied (`spamd db upgrade`); a new SQLite file's directory is made."""
    path = sqlite_path(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {path.parent} for the database: {exc.strerror}") from exc
    try:
        migrate.upgrade(url)
    except SQLAlchemyError as exc:
        raise unreachable(url, exc) from exc


def unreachable(url: str, exc: SQLAlchemyError) -> StoreError:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return StoreError(f"database {display(url)}: {reason}")


@contextmanager
def opened(url: str) -> Iterator[Engine]:
    """`open_store` for a `with` block: the engine is disposed of at its end."""
    engine = open_store(url)
    try:
        yield engine
    finally:
        engine.dispose()
