"""Pruning old model versions on SQLite and PostgreSQL: what stays, what leaves disk and database, rollback after.

Each test builds the same history in a real registry, with real version directories:

    version   created      registry
    S         2020-01-01   once active (the starter: the registry's first)
    A         2020-01-02   once active
    R1        2020-01-03   candidate, never active (rejected)
    B         2020-01-04   once active
    C         2020-01-05   once active
    R2        2020-01-06   candidate, never active (rejected)
    D         2020-01-07   active

With keep 1: D (active), C (rollback target) and S (starter) are protected, B is the one
kept, and R1, R2, A are pruned: the candidates first, though they are newer than A.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from spamd import modelstore, prune, registry
from spamd.cli import main
from spamd.cli.retrain import EXIT_BUSY
from spamd.db import registry as repo
from spamd.db.schema import ModelFile, ModelVersion
from spamd.errors import ModelNotFound
from spamd.retrain import lock
from tests.fixtures_models import TrainedTiny, new_version

S, A, R1, B, C, R2, D = (f"202001{day:02d}T000000Z" for day in range(1, 8))
EVERY = [S, A, R1, B, C, R2, D]
PRUNED_AT_KEEP_1 = [R1, R2, A]
LATER = timedelta(hours=2)  # past retention.RECENT, so no activation counts as recent


def build(engine: Engine, models_dir: Path, tiny: TrainedTiny, activations: dict[str, datetime] | None = None) -> None:
    """The history above (or other activation times), with models/ACTIVE on the active version as on a node."""
    models = tiny.load()
    activations = activations or {v: datetime.fromisoformat(v[:8]).replace(tzinfo=UTC) + timedelta(hours=1)
                                  for v in (S, A, B, C, D)}
    for name in EVERY:
        new_version(models_dir, models, name)
    with Session(engine) as s, s.begin():
        for name in EVERY:
            registry.register(s, models_dir, name)
        for name, when in sorted(activations.items(), key=lambda item: item[1]):
            registry.store_files(s, models_dir, name)
            repo.activate(s, name, when)
    modelstore.set_active(models_dir, max(activations, key=lambda v: activations[v]))


def statuses(engine: Engine) -> dict[str, str]:
    with Session(engine) as s:
        return {v.version: v.status for v in repo.list_versions(s)}


def files_in_database(engine: Engine) -> set[str]:
    with Session(engine) as s:
        return set(s.scalars(select(ModelFile.version).distinct()))


def on_disk(models_dir: Path) -> list[str]:
    return [v for v in modelstore.list_versions(models_dir) if v in EVERY]


def now() -> datetime:
    return datetime.now(UTC)


def test_keeps_the_newest_and_the_protected_and_removes_the_rest_from_disk_and_database(
        engine: Engine, models_dir: Path, tiny_trained: TrainedTiny) -> None:
    build(engine, models_dir, tiny_trained)
    report = prune.prune(engine, models_dir, keep=1)
    assert report.plan.prune == PRUNED_AT_KEEP_1 and report.was == {R1: "candidate", R2: "candidate", A: "retired"}
    assert report.plan.keep == {D: "active, this host's models/ACTIVE", C: "rollback target", B: "one of the 1 kept",
                                S: "starter"}
    assert sorted(report.removed) == sorted(PRUNED_AT_KEEP_1)
    assert on_disk(models_dir) == [S, B, C, D]
    assert not list(models_dir.glob(".pruned-*")) and not list(models_dir.glob(".tmp-*"))
    assert report.unregistered == [tiny_trained.version]  # not the registry's: left alone
    assert (models_dir / tiny_trained.version / modelstore.MANIFEST).is_file()
    assert files_in_database(engine) == {S, B, C, D}  # every node can still rebuild the ones kept
    with Session(engine) as s:  # every row stays, so runs and score logs that name a version still mean something
        rows = {v.version: v for v in repo.list_versions(s)}
    assert set(rows) == set(EVERY)
    assert {v: r.status for v, r in rows.items()} == {S: "retired", A: "pruned", R1: "pruned", B: "retired",
                                                      C: "retired", R2: "pruned", D: "active"}
    assert all((r.pruned_at is not None) == (r.status == "pruned") for r in rows.values())
    assert rows[A].activated_at is not None and rows[A].metrics == rows[B].metrics  # its history is intact
    again = prune.prune(engine, models_dir, keep=1)
    assert again.was == {} and again.removed == [] and again.plan.prune == []


def test_keep_more_or_zero_prunes_less_or_nothing(engine: Engine, models_dir: Path, tiny_trained: TrainedTiny) -> None:
    build(engine, models_dir, tiny_trained)
    assert prune.prune(engine, models_dir, keep=0).plan.prune == []
    assert prune.prune(engine, models_dir, keep=2).plan.prune == [R1, R2]  # A is now the second kept
    assert on_disk(models_dir) == [S, A, B, C, D]
    assert prune.prune(engine, models_dir, keep=4).plan.prune == []


def test_a_dry_run_removes_nothing_and_says_what_a_real_run_removes(
        engine: Engine, models_dir: Path, tiny_trained: TrainedTiny) -> None:
    build(engine, models_dir, tiny_trained)
    before = (statuses(engine), files_in_database(engine), on_disk(models_dir))
    dry = prune.prune(engine, models_dir, keep=1, dry_run=True)
    assert (statuses(engine), files_in_database(engine), on_disk(models_dir)) == before
    real = prune.prune(engine, models_dir, keep=1)
    assert (dry.plan, dry.was, sorted(dry.removed)) == (real.plan, real.was, sorted(real.removed))
    assert dry.dry_run and not real.dry_run and real.was


def test_rollback_works_after_a_prune_and_steps_over_pruned_versions(
        engine: Engine, models_dir: Path, tmp_path: Path, tiny_trained: TrainedTiny) -> None:
    build(engine, models_dir, tiny_trained)
    prune.prune(engine, models_dir, keep=1)
    for expected in (C, B, S):  # A is pruned: rollback goes from B to the starter
        with Session(engine) as s, s.begin():
            assert registry.rollback(s, models_dir) == expected
        fresh = tmp_path / f"node-{expected}"  # a node that has none of the versions rebuilds it from the database
        with Session(engine) as s:
            registry.materialise(s, fresh, expected)
        assert modelstore.load(fresh, expected).version == expected
    with Session(engine) as s, s.begin(), pytest.raises(ModelNotFound, match="no earlier active version"):
        registry.rollback(s, models_dir)
    with Session(engine) as s, s.begin(), pytest.raises(ModelNotFound, match="was pruned"):
        registry.activate(s, models_dir, A)
    assert statuses(engine)[A] == "pruned"


def test_a_version_active_in_the_last_hour_or_named_by_models_active_stays(
        engine: Engine, models_dir: Path, tiny_trained: TrainedTiny) -> None:
    t = now()
    old = {v: datetime.fromisoformat(v[:8]).replace(tzinfo=UTC) for v in (S, B, C)}
    build(engine, models_dir, tiny_trained, {**old, A: t - timedelta(minutes=30), D: t - timedelta(minutes=20)})
    # A, though older than C, was active until D came 20 minutes ago: a daemon may still be loading it.
    plan = prune.prune(engine, models_dir, keep=1, dry_run=True).plan
    assert plan.keep[A] == "active in the last hour" and plan.prune == [R1, R2]
    modelstore.set_active(models_dir, A)  # this host's daemons last followed A
    plan = prune.prune(engine, models_dir, keep=1, dry_run=True, now=t + LATER).plan
    assert plan.keep[A] == "this host's models/ACTIVE" and plan.prune == [R1, R2]
    modelstore.set_active(models_dir, D)
    assert prune.prune(engine, models_dir, keep=1, now=t + LATER).plan.prune == [R1, R2, A]
    assert A not in on_disk(models_dir)


def test_each_host_removes_only_its_own_copies(engine: Engine, models_dir: Path, tmp_path: Path,
                                               tiny_trained: TrainedTiny) -> None:
    build(engine, models_dir, tiny_trained)
    other = tmp_path / "other-host" / "models"
    shutil.copytree(models_dir, other)
    prune.prune(engine, models_dir, keep=1)
    assert on_disk(other) == EVERY  # the registry says pruned; this host's copies wait for this host
    report = prune.prune(engine, other, keep=1)
    assert report.was == {} and sorted(report.removed) == sorted(PRUNED_AT_KEEP_1)
    assert on_disk(other) == [S, B, C, D]
    assert statuses(engine)[A] == "pruned"


def test_activating_a_pruned_version_this_host_still_has_brings_it_back(
        engine: Engine, db_url: str, models_dir: Path, tmp_path: Path, tiny_trained: TrainedTiny) -> None:
    build(engine, models_dir, tiny_trained)
    other = tmp_path / "other-host" / "models"
    shutil.copytree(models_dir, other)
    prune.prune(engine, models_dir, keep=1)
    with Session(engine) as s, s.begin():
        registry.activate(s, other, A)
    with Session(engine) as s:
        row = s.get_one(ModelVersion, A)
        assert (row.status, row.pruned_at) == ("active", None)
    assert A in files_in_database(engine)
    assert registry.resolve_active(db_url, models_dir) == A
    assert modelstore.load(models_dir, A).version == A  # rebuilt here from the database


@pytest.mark.parametrize("version", [A, B], ids=["one-it-prunes", "one-it-keeps"])
def test_an_activation_on_another_host_waits_for_a_prune_in_progress(
        engine: Engine, models_dir: Path, tiny_trained: TrainedTiny, version: str) -> None:
    # (On SQLite, whose SELECT ... FOR UPDATE is a plain read, the prune's transaction holds the
    # database's write lock: db/registry.py's _write_lock.)
    build(engine, models_dir, tiny_trained)
    done = threading.Event()

    def activate() -> None:
        with Session(engine) as s, s.begin():
            registry.activate(s, models_dir, version)
        done.set()

    with Session(engine) as pruning, pruning.begin():  # a prune's transaction, between its decision and its commit
        assert prune.judge(pruning, models_dir, keep=1, now=now()).plan.prune == PRUNED_AT_KEEP_1
        other_host = threading.Thread(target=activate)
        other_host.start()
        # Until the prune commits, its decision stands: no version it protects or removes can change.
        assert not done.wait(1.0)
    other_host.join(30)
    # Had activating A copied its files into the database before the prune deleted them, A would be
    # active without them; waiting, it finds A pruned and puts them back from this host's copy.
    assert done.is_set() and statuses(engine)[version] == "active" and version in files_in_database(engine)


def test_a_serving_hosts_watcher_removes_its_copies_of_pruned_versions(
        engine: Engine, db_url: str, models_dir: Path, tmp_path: Path, tiny_trained: TrainedTiny) -> None:
    build(engine, models_dir, tiny_trained)
    serving = tmp_path / "serving-host" / "models"
    shutil.copytree(models_dir, serving)
    prune.prune(engine, models_dir, keep=1)
    changes: list[str] = []

    async def on_change(version: str) -> str:
        changes.append(version)
        return version

    watcher = registry.ModelWatcher(db_url, serving, 0.05, D, on_change, sweep=True)
    try:
        asyncio.run(watcher.poll())
        assert changes == [] and on_disk(serving) == EVERY  # nothing changed, nothing swept
        E = new_version(models_dir, tiny_trained.load(), "20200108T000000Z")  # noqa: N806
        with Session(engine) as s, s.begin():
            registry.activate(s, models_dir, E)
        asyncio.run(watcher.poll())
    finally:
        watcher.engine.dispose()
    assert changes == [E]
    assert on_disk(serving) == [S, B, C, D] and (serving / E / modelstore.MANIFEST).is_file()


@pytest.fixture
def cli(db_url: str, models_dir: Path, tmp_path: Path) -> Callable[..., Result]:
    config = tmp_path / "spamd.toml"
    config.write_text(f'[scoring]\nmodels_dir = "{models_dir}"\n[database]\nurl = "{db_url}"\n'
                      "[training]\nkeep_versions = 1\n")
    return lambda *args: CliRunner().invoke(main, ["--config", str(config), *args])


def test_models_prune_prints_what_it_removes_and_waits_for_a_retrain(
        cli: Callable[..., Result], engine: Engine, models_dir: Path, tiny_trained: TrainedTiny) -> None:
    build(engine, models_dir, tiny_trained)
    dry = cli("models", "prune", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert [line.split()[:3] for line in dry.output.splitlines() if line.startswith("would")] == [
        ["would", "prune", R1], ["would", "prune", R2], ["would", "prune", A],
        ["would", "delete", str(models_dir / A)], ["would", "delete", str(models_dir / R1)],
        ["would", "delete", str(models_dir / R2)]]
    assert f"keep    {C}  (rollback target)" in dry.output and dry.output.endswith("dry run: nothing was removed\n")
    assert on_disk(models_dir) == EVERY
    held = lock.acquire(engine, stale_after=3600, holder="trainer:1:x")
    assert held is not None
    try:
        busy = cli("models", "prune")
        assert busy.exit_code == EXIT_BUSY and on_disk(models_dir) == EVERY
    finally:
        held.release()
    real = cli("models", "prune", "--keep", "2")
    assert real.exit_code == 0, real.output
    assert [line.split()[1] for line in real.output.splitlines() if line.startswith("prune")] == [R1, R2]
    assert on_disk(models_dir) == [S, A, B, C, D]
    listing = cli("models", "list").output
    assert {line.split()[0]: line.split()[1] for line in listing.splitlines()[1:]}[R1] == "pruned"
