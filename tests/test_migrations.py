"""Migrations build exactly the ORM's schema, walk down and up cleanly, and commands refuse an old schema."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from spamd.db import migrate, scorelogs
from spamd.db.engine import make_engine
from spamd.db.schema import Base, ModelVersion
from spamd.db.scorelogs import LogQuery
from spamd.db.store import open_store
from spamd.errors import SchemaOutOfDate
from tests.fixtures_db import PgServer, log_row, write_config


def differences(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_of_an_empty_database_matches_the_orm(empty_db: Callable[[], str]) -> None:
    url = empty_db()
    migrate.upgrade(url)
    assert differences(url) == []
    assert tables(url) == set(Base.metadata.tables)


def test_every_revision_walks_down_and_up(empty_db: Callable[[], str]) -> None:
    url = empty_db()
    revisions = [r.revision for r in reversed(list(migrate.script().walk_revisions()))]  # oldest first
    for rev in revisions:
        migrate.upgrade(url, rev)
        migrate.downgrade(url, "-1")
        migrate.upgrade(url, rev)
    migrate.downgrade(url, "base")
    assert tables(url) == set()
    migrate.upgrade(url)
    assert differences(url) == []


def test_an_empty_or_old_schema_is_refused_naming_the_command(empty_db: Callable[[], str]) -> None:
    url = empty_db()
    migrate.upgrade(url)  # an existing database, then one revision back: out of date
    migrate.downgrade(url, "-1")
    try:
        open_store(url)
    except SchemaOutOfDate as exc:
        assert "spamd db upgrade" in str(exc)
    else:
        raise AssertionError("an out-of-date schema was accepted")


def test_a_missing_sqlite_file_is_created_and_migrated_on_first_use(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'var' / 'spamd.db'}"
    engine = open_store(url)
    engine.dispose()
    assert (tmp_path / "var" / "spamd.db").exists()
    assert differences(url) == []


def test_commands_refuse_an_out_of_date_schema_and_db_upgrade_fixes_it(
        empty_db: Callable[[], str], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from spamd.cli import main

    url = empty_db()
    migrate.upgrade(url)
    migrate.downgrade(url, "base")
    config = str(write_config(tmp_path / "config.toml", url))
    run = CliRunner().invoke
    refused = run(main, ["--config", config, "logs", "--since", "1h"])
    assert refused.exit_code == 1
    assert "spamd db upgrade" in refused.stderr
    assert "schema empty (out of date" in run(main, ["db", "current", "--config", config]).stdout
    upgraded = run(main, ["db", "upgrade", "--config", config])
    assert upgraded.exit_code == 0, upgraded.output
    assert f"schema {migrate.head()} (at head)" in run(main, ["db", "current", "--config", config]).stdout
    assert run(main, ["--config", config, "logs"]).exit_code == 0


def test_going_below_0003_turns_pruned_versions_back_into_what_they_were(empty_db: Callable[[], str]) -> None:
    url = empty_db()
    migrate.upgrade(url)
    t = datetime(2026, 11, 1, tzinfo=UTC)
    engine = make_engine(url)
    with Session(engine) as s, s.begin():
        for name, status, activated in (("v1", "pruned", t), ("v2", "pruned", None), ("v3", "active", t)):
            s.add(ModelVersion(version=name, kind="cnn+rnn", path=name, sha256="0" * 64, created_at=t,
                               trained_on_labels=0, metrics={}, status=status, activated_at=activated,
                               pruned_at=t if status == "pruned" else None))
    engine.dispose()
    migrate.downgrade(url, "0002")  # an older spamd knows no "pruned"
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = {v: st for v, st in conn.execute(text("SELECT version, status FROM model_versions"))}
    engine.dispose()
    assert rows == {"v1": "retired", "v2": "candidate", "v3": "active"}


def test_0004_keeps_the_score_logs_already_written(empty_db: Callable[[], str]) -> None:
    url = empty_db()
    migrate.upgrade(url, "0003")
    old = log_row(5, message_id="<before-0004@x>")  # a row as spamd wrote it before queue ids
    engine = make_engine(url)
    with engine.begin() as conn:
        values = {**scorelogs.row_values(old), "extra": "{}"}
        values.pop("queue_id")
        columns, params = ", ".join(values), ", ".join(":" + k for k in values)
        conn.execute(text(f"INSERT INTO score_logs ({columns}) VALUES ({params})"), values)
    engine.dispose()
    migrate.upgrade(url)
    engine = make_engine(url)
    with Session(engine) as s:
        assert [(r.message_id, r.queue_id) for r in scorelogs.find(s, LogQuery())] == [("<before-0004@x>", "")]
    engine.dispose()


@pytest.mark.postgres
def test_nodes_upgrading_one_postgresql_at_once_all_succeed(pg_server: PgServer, tmp_path: Path) -> None:
    # deploy/spamd.service runs `spamd db upgrade` before every start, on every node: two at once
    # failed with a duplicate key in pg_type. They now take turns.
    url = pg_server.create(pg_server.new_database_url())
    configs = [write_config(tmp_path / f"node{i}.toml", url) for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-m", "spamd", "db", "upgrade", "--config", str(c)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in configs]
    outcomes = [(p.wait(60), p.stderr.read().decode() if p.stderr else "") for p in procs]
    for p in procs:
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()
    assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
    assert differences(url) == []
