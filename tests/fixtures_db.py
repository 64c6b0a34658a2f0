"""Fixtures: a real SQLite file and a real PostgreSQL database for every store test, config files, a CLI runner.

`db_url` is parametrised over both databases. PostgreSQL is the server named by
$SPAMD_TEST_POSTGRES_URL (default: postgres on 127.0.0.1:5432, trust auth): the session
creates throwaway databases with unique names there and drops them at the end. When the
server cannot be reached the PostgreSQL tests are skipped, unless SPAMD_REQUIRE_POSTGRES=1
(as in CI), where they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from spamd.cli import main
from spamd.db import migrate
from spamd.db.engine import make_engine
from spamd.db.schema import Base
from spamd.scorelog import ScoreLogRow, new_log_id

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@dataclass
class PgServer:
    """The PostgreSQL server, reached through its maintenance database, and the databases made on it."""

    url: str
    admin: Engine
    made: list[str] = field(default_factory=list)

    def new_database_url(self) -> str:
        """The URL of a database with a unique name that does not exist yet (`create` makes it)."""
        name = f"spamd_test_{os.getpid()}_{secrets.token_hex(4)}"
        self.made.append(name)
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def create(self, url: str) -> str:
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{make_url(url).database}"'))
        return url

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.made:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    url = os.environ.get("SPAMD_TEST_POSTGRES_URL", PG_DEFAULT)
    admin = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect():
            pass
    except OperationalError as exc:
        admin.dispose()
        reason = f"PostgreSQL at {make_url(url).render_as_string()} unreachable: {str(exc.orig).strip()}"
        if os.environ.get("SPAMD_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " (SPAMD_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    server = PgServer(url, admin)
    yield server
    server.drop_all()
    admin.dispose()


@pytest.fixture(scope="session")
def pg_database(pg_server: PgServer) -> str:
    """One migrated PostgreSQL database for the session; `db_url` empties it after each test."""
    url = pg_server.create(pg_server.new_database_url())
    migrate.upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store at head: a new SQLite file, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'spamd.db'}"
        migrate.upgrade(url)
        yield url
        return
    url = request.getfixturevalue("pg_database")
    yield url
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(Base.metadata.tables)} RESTART IDENTITY"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """A factory: the URL of a database with no tables; on PostgreSQL created when the factory is called."""
    if request.param == "sqlite":
        return lambda: f"sqlite:///{tmp_path / 'fresh.db'}"
    server: PgServer = request.getfixturevalue("pg_server")
    return lambda: server.create(server.new_database_url())


@pytest.fixture
def absent_db(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> tuple[str, Callable[[], None]]:
    """(URL, make_it): a database of db_url's kind that cannot be reached until `make_it()` creates it at head."""
    if db_url.startswith("sqlite"):
        path = tmp_path / "later" / "spamd.db"  # SQLite cannot open a file in a missing directory
        url = f"sqlite:///{path}"

        def make_dir() -> None:
            path.parent.mkdir()
            migrate.upgrade(url)

        return url, make_dir
    server: PgServer = request.getfixturevalue("pg_server")
    url = server.new_database_url()

    def make_it() -> None:
        server.create(url)
        migrate.upgrade(url)

    return url, make_it


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def write_config(path: Path, db_url: str) -> Path:
    path.write_text(f'[database]\nurl = "{db_url}"\n\n[logs]\nspool = "scorelog.spool"\nflush_interval = 0.05\n')
    return path


@pytest.fixture
def config_file(db_url: str, tmp_path: Path) -> Path:
    """A config.toml for the test's database, with the spool under tmp_path."""
    return write_config(tmp_path / "config.toml", db_url)


@pytest.fixture
def spamd(config_file: Path) -> Callable[..., Result]:
    """Run `spamd ARGS...` in-process against the test's database; `input` feeds stdin."""

    def run(*args: str, input: bytes | None = None) -> Result:
        return CliRunner().invoke(main, ["--config", str(config_file), *args], input=input)

    return run


def log_row(minutes_ago: float = 0.0, now: datetime | None = None, **fields: object) -> ScoreLogRow:
    """A plausible score-log row, `minutes_ago` old; any field can be given."""
    t = (now or datetime.now(UTC)) - timedelta(minutes=minutes_ago)
    values: dict[str, object] = dict(
        id=new_log_id(int(t.timestamp() * 1000)), time=t, message_id=f"<{secrets.token_hex(6)}@example.org>",
        sender="alice@example.org", recipients=("bob@example.com",), client_addr="127.0.0.1", size=2048,
        cnn_score=0.1, rnn_score=None, score=0.1, verdict="ham", action="passed", long_context=False,
        model_version="20260101T000000Z", latency_ms=4.0,
    )
    values.update(fields)
    return ScoreLogRow(**values)  # type: ignore[arg-type]
