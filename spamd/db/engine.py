"""Engines for the store's URL: SQLite tuned for several writers, PostgreSQL through psycopg 3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL

# Seconds a writer waits for another's lock (SQLite) or for the server to answer a connect (PostgreSQL).
SQLITE_BUSY_TIMEOUT = 30.0
PG_CONNECT_TIMEOUT = 5


def make_engine(url: str | URL) -> Engine:
    """An engine for `url`; the caller disposes of it."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        engine = create_engine(u, connect_args={"timeout": SQLITE_BUSY_TIMEOUT})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    args: dict[str, Any] = {"connect_timeout": PG_CONNECT_TIMEOUT} if u.get_backend_name() == "postgresql" else {}
    return create_engine(u, connect_args=args, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets `spamd logs` read while the daemons write; NORMAL sync is safe with WAL.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    # Score-log inserts land at random places in the sender and message-id indexes: a bigger
    # page cache and fewer (fsync'ing) checkpoints keep a million-row table above 5,000 rows/s.
    cur.execute("PRAGMA cache_size=-65536")  # KiB
    cur.execute("PRAGMA wal_autocheckpoint=10000")  # pages
    cur.close()


def sqlite_path(url: str | URL) -> Path | None:
    """The file behind a SQLite URL; None for other databases and in-memory SQLite."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def display(url: str | URL) -> str:
    """The URL as it may be shown to a user: without its password."""
    return make_url(url).render_as_string(hide_password=True)
