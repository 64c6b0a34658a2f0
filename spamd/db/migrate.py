"""Running the Alembic migrations in migrations/ from code, and checking a database is at head.

    upgrade(url)          bring the schema to head (what `spamd db upgrade` does)
    current(conn)         the revision a database is at (None: empty)
    check_at_head(conn)   raise SchemaOutOfDate unless the schema is at head
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from spamd.db.engine import make_engine
from spamd.errors import SchemaOutOfDate

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
UPGRADE_HINT = "run `spamd db upgrade`"


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    """Alembic's config for migrations/, independent of the working directory and of alembic.ini."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    rev = script().get_current_head()
    assert rev is not None, "migrations/ has no revisions"
    return rev


def upgrade(url: str, revision: str = "head") -> None:
    _run(url, command.upgrade, revision)


def downgrade(url: str, revision: str) -> None:
    _run(url, command.downgrade, revision)


# PostgreSQL: migrations run one at a time (a transaction-level advisory lock), so nodes that all run
# `spamd db upgrade` before they start (deploy/spamd.service) wait for each other; two at once
# failed with a duplicate key in pg_type. SQLite's DDL takes its write lock already.
PG_MIGRATION_KEY = 0x5350414E  # "SPAN", beside the trainer lock's "SPAM"


def _run(url: str, fn: object, revision: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_MIGRATION_KEY})
            fn(alembic_config(conn), revision)  # type: ignore[operator]
    finally:
        engine.dispose()


def current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def check_at_head(conn: Connection) -> None:
    """Refuse to work on a schema older (or newer) than this code's migrations."""
    at, want = current(conn), head()
    if at == want:
        return
    if at is None:
        raise SchemaOutOfDate(f"the database has no spamd schema yet: {UPGRADE_HINT}")
    if at not in {rev.revision for rev in script().walk_revisions()}:
        raise SchemaOutOfDate(f"the database schema is at {at}, which this spamd does not know: upgrade spamd")
    raise SchemaOutOfDate(f"the database schema is at {at}, spamd needs {want}: {UPGRADE_HINT}")
