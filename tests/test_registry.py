"""The model registry on SQLite and PostgreSQL: seed, activate, rollback, files shipped to a node, the watcher."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from spamd import modelstore, registry
from spamd.cli.common import load_active
from spamd.db import migrate
from spamd.db import registry as repo
from spamd.db.engine import make_engine
from spamd.db.schema import ModelFile
from spamd.errors import ModelError, ModelIntegrityError, ModelNotFound
from tests.fixtures_models import TrainedTiny, new_version
from tests.fixtures_retrain import retrain_config


@pytest.fixture
def engine(retrain_db: str) -> Iterator[Engine]:
    e = make_engine(retrain_db)
    yield e
    e.dispose()


def test_an_empty_registry_is_seeded_from_models_active(engine: Engine, models_dir: Path) -> None:
    starter = modelstore.active_version(models_dir)
    with Session(engine) as s, s.begin():
        assert registry.seed(s, models_dir) == starter
    with Session(engine) as s, s.begin():
        assert registry.seed(s, models_dir) == starter  # once only
        [row] = repo.list_versions(s)
        assert (row.version, row.status, row.activated_at is not None) == (starter, "active", True)


def test_activate_and_rollback_step_through_versions(engine: Engine, models_dir: Path,
                                                     tiny_trained: TrainedTiny) -> None:
    tiny = tiny_trained.load()
    starter = modelstore.active_version(models_dir)
    v2, v3 = new_version(models_dir, tiny, "29990101T000000Z"), new_version(models_dir, tiny, "29990102T000000Z")
    with Session(engine) as s, s.begin():
        registry.seed(s, models_dir)
        registry.activate(s, models_dir, v2)
        registry.activate(s, models_dir, v3)
    with Session(engine) as s, s.begin():
        assert registry.rollback(s, models_dir) == v2
    with Session(engine) as s, s.begin():
        assert registry.rollback(s, models_dir) == starter
        assert {v.version: v.status for v in repo.list_versions(s)} == {v3: "retired", v2: "retired",
                                                                        starter: "active"}
    with Session(engine) as s, s.begin(), pytest.raises(ModelNotFound):
        registry.rollback(s, models_dir)


@pytest.mark.parametrize("damage", ["flipped byte", "manifest key unknown"])
def test_a_version_whose_files_fail_their_check_is_not_activated(damage: str, engine: Engine, models_dir: Path,
                                                                 tiny_trained: TrainedTiny) -> None:
    # It used to go live (its bytes went into the database with their own sha256): every node then
    # failed to load it, and every message passed unscored.
    starter = modelstore.active_version(models_dir)
    bad = new_version(models_dir, tiny_trained.load(), "29990101T000000Z")
    if damage == "flipped byte":
        weights = models_dir / bad / "cnn.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
    else:
        manifest = models_dir / bad / modelstore.MANIFEST
        manifest.write_text(manifest.read_text().replace('"version":', '"colour": "red", "version":', 1))
    with Session(engine) as s, s.begin():
        registry.seed(s, models_dir)
    with Session(engine) as s, s.begin(), pytest.raises(ModelError, match="sha256|not a manifest"):
        registry.activate(s, models_dir, bad)
    with Session(engine) as s:
        assert repo.active_version(s).version == starter
        assert bad not in {v.version for v in repo.list_versions(s)}
        assert s.query(ModelFile).filter(ModelFile.version == bad).count() == 0


def test_a_node_without_the_files_rebuilds_them_from_the_database(engine: Engine, retrain_db: str, models_dir: Path,
                                                                   tmp_path: Path, tiny_trained: TrainedTiny) -> None:
    v2 = new_version(models_dir, tiny_trained.load(), "29990101T000000Z")
    with Session(engine) as s, s.begin():
        registry.seed(s, models_dir)
        registry.activate(s, models_dir, v2)
    other = tmp_path / "other-node" / "models"  # a node that has only the starter
    shutil.copytree(tiny_trained.models_dir, other)
    assert registry.resolve_active(retrain_db, other) == v2
    assert modelstore.load(other, v2).version == v2  # sha256 checked against its manifest
    assert modelstore.active_version(other) == v2
    # readable by the daemon's user whoever rebuilt it (a root `spamd score`, say), as `save` writes a version
    assert (other / v2).stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in (other / v2).iterdir()} == {0o644}
    shutil.rmtree(other / v2)
    with Session(engine) as s, s.begin():  # a damaged copy in the database is refused
        s.execute(update(ModelFile).where(ModelFile.version == v2, ModelFile.name == "cnn.safetensors")
                  .values(data=b"not weights"))
    with pytest.raises(ModelIntegrityError):
        registry.resolve_active(retrain_db, other)
    assert not (other / v2).exists() and not list(other.glob(".tmp-*"))
    # Starting there, spamd serves the last version the host had rather than no model at all (which
    # passed every message unscored).
    (other / modelstore.ACTIVE).write_text(tiny_trained.version + "\n")  # what the host served before v2
    assert registry.active_in_database(retrain_db, other) is None
    assert load_active(retrain_config(retrain_db, other, tmp_path)).version == tiny_trained.version


def test_the_watcher_reports_a_newly_active_version(engine: Engine, retrain_db: str, models_dir: Path,
                                                    tiny_trained: TrainedTiny) -> None:
    starter = registry.resolve_active(retrain_db, models_dir)
    seen: list[str] = []

    async def on_change(version: str) -> str | None:
        seen.append(version)
        return version if len(seen) > 1 else starter  # the first reload fails: the daemon keeps the starter

    watcher = registry.ModelWatcher(retrain_db, models_dir, 0.05, starter, on_change)
    asyncio.run(watcher.poll())
    assert seen == []
    v2 = new_version(models_dir, tiny_trained.load(), "29990101T000000Z")
    with Session(engine) as s, s.begin():
        registry.activate(s, models_dir, v2)
    asyncio.run(watcher.poll())
    assert watcher.current == starter  # it used to move on as if the reload had worked, and never retried
    asyncio.run(watcher.poll())
    asyncio.run(watcher.poll())
    watcher.engine.dispose()
    assert seen == [v2, v2] and watcher.current == v2


def test_on_sqlite_a_locked_registry_is_locked_against_another_writer(tmp_path: Path, models_dir: Path) -> None:
    # SELECT ... FOR UPDATE is a plain read on SQLite: an activation could commit between a prune's
    # reading of the registry and its marking of versions pruned, and the version just activated
    # was pruned, its files deleted. Locking the rows now takes the database's write lock.
    url = f"sqlite:///{tmp_path / 'race.db'}"
    migrate.upgrade(url)
    pruner = make_engine(url)
    activator = create_engine(url, connect_args={"timeout": 0.2})  # gives up waiting quickly
    with Session(pruner) as s, s.begin():
        registry.seed(s, models_dir)
    try:
        with Session(pruner) as p, p.begin():
            assert repo.list_versions(p, lock=True)  # the prune's judging, under way
            with Session(activator) as a, a.begin(), pytest.raises(OperationalError, match="locked"):
                repo.lock_version(a, modelstore.active_version(models_dir))
        with Session(activator) as a, a.begin():  # once the prune's transaction is over
            assert repo.lock_version(a, modelstore.active_version(models_dir)) is not None
    finally:
        pruner.dispose()
        activator.dispose()


def test_the_watcher_outlives_a_failed_poll(engine: Engine, retrain_db: str, models_dir: Path,
                                            tiny_trained: TrainedTiny) -> None:
    # Its task had no guard: one exception (a reload that raised, a full disk while rebuilding a
    # version) ended it, unseen, and the daemon never followed the registry again.
    starter = registry.resolve_active(retrain_db, models_dir)
    v2 = new_version(models_dir, tiny_trained.load(), "29990101T000000Z")
    with Session(engine) as s, s.begin():
        registry.activate(s, models_dir, v2)
    calls: list[str] = []

    async def on_change(version: str) -> str:
        calls.append(version)
        if len(calls) == 1:
            raise RuntimeError("a reload that blew up")
        return version

    watcher = registry.ModelWatcher(retrain_db, models_dir, 0.02, starter, on_change)

    async def watch_briefly() -> None:
        task = asyncio.ensure_future(watcher.run())
        for _ in range(200):
            await asyncio.sleep(0.02)
            if watcher.current == v2:
                break
        task.cancel()

    asyncio.run(watch_briefly())
    assert calls == [v2, v2] and watcher.current == v2
