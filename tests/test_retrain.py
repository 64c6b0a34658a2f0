"""The retrain job on SQLite and PostgreSQL: promotion, the gate refusing a worse candidate, a killed trainer, locks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from spamd import modelstore
from spamd.cli.common import load_active
from spamd.config import Config
from spamd.db import registry as repo
from spamd.db.engine import make_engine
from spamd.db.labels import prepare
from spamd.db.schema import ModelFile, TrainingRun
from spamd.retrain import child, gate, holdout, job, lock
from spamd.train import Sample
from tests.fixtures_models import TrainedTiny, fixture_mail
from tests.fixtures_retrain import label
from tests.test_prune import R1, R2, A, B, C, D, S, build, on_disk, statuses


def label_fixture_mail(db_url: str, flip_training_part: bool = False, fraction: float = 0.25) -> None:
    """Label the fixture mail; with `flip_training_part`, every message outside the holdout gets the wrong label."""
    for kind in ("train", "starter"):
        for truth, wrong in (("spam", "ham"), ("ham", "spam")):
            raws = fixture_mail(kind, truth)
            held = [r for r in raws if holdout.held_out(prepare(r).sha256, fraction)]
            rest = [r for r in raws if r not in held]
            label(db_url, held, truth)
            label(db_url, rest, wrong if flip_training_part else truth)


def runs(db_url: str) -> list[TrainingRun]:
    engine = make_engine(db_url)
    with Session(engine) as s:
        out = list(s.scalars(select(TrainingRun).order_by(TrainingRun.id)))
    engine.dispose()
    return out


def active(db_url: str) -> str | None:
    engine = make_engine(db_url)
    with Session(engine) as s:
        v = repo.active_version(s)
        out = v.version if v else None
    engine.dispose()
    return out


def test_a_good_candidate_is_promoted_and_recorded(retrain_cfg: Callable[..., Config], models_dir: Path) -> None:
    cfg = retrain_cfg(epochs=10, gate_auc_tolerance=0.05, gate_fpr_tolerance=0.1)
    before = modelstore.active_version(models_dir)
    # the active version is one from before skip_delivery_headers (as the shipped starter is)
    manifest = models_dir / before / "manifest.json"
    old = json.loads(manifest.read_text())
    del old["tokenizer"]["skip_delivery_headers"]
    manifest.write_text(json.dumps(old))
    label_fixture_mail(cfg.database_url)
    out = job.run(cfg)
    assert out.outcome == "promoted", out
    assert out.candidate is not None  # ...and its successor learns without the delivery headers
    assert modelstore.read_manifest(models_dir, out.candidate).tokenizer["skip_delivery_headers"] is True
    assert out.active == before and out.candidate not in (None, before)
    assert active(cfg.database_url) == out.candidate
    assert load_active(cfg).version == out.candidate  # and models/ACTIVE follows the registry
    assert modelstore.active_version(models_dir) == out.candidate
    [run] = runs(cfg.database_url)
    assert (run.outcome, run.candidate_version, run.active_version) == ("promoted", out.candidate, before)
    assert run.labels == run.metrics["counts"]["labelled"] > 100 and run.finished_at is not None and run.error == ""
    assert run.metrics["candidate"]["n"] == run.metrics["active"]["n"] == run.metrics["counts"]["holdout"] > 10
    assert run.metrics["gate"]["promote"] is True and run.metrics["seconds"]["train"] > 0
    assert run.metrics["candidate"]["version"] == out.candidate  # as saved (a save may rename it: "...Z-2")
    engine = make_engine(cfg.database_url)
    with Session(engine) as s:  # the promoted version's files are in the database for other nodes
        names = set(s.scalars(select(ModelFile.name).where(ModelFile.version == out.candidate)))
    engine.dispose()
    assert names == {"manifest.json", "cnn.safetensors", "rnn.safetensors"}


def test_the_job_prunes_old_versions_after_a_promotion(retrain_cfg: Callable[..., Config], models_dir: Path,
                                                       tiny_trained: TrainedTiny) -> None:
    cfg = retrain_cfg(epochs=10, gate_auc_tolerance=0.05, gate_fpr_tolerance=0.1, keep_versions=1)
    engine = make_engine(cfg.database_url)
    build(engine, models_dir, tiny_trained)  # the history in tests/test_prune.py, D active
    label_fixture_mail(cfg.database_url)
    out = job.run(cfg)
    assert out.outcome == "promoted" and out.active == D, out
    # The candidate is active, D (just retired) is the rollback target, S the starter, C the one kept.
    assert out.pruned == (R1, R2, A, B)
    assert on_disk(models_dir) == [S, C, D] and out.candidate in modelstore.list_versions(models_dir)
    assert {v: st for v, st in statuses(engine).items() if st == "pruned"} == dict.fromkeys((R1, R2, A, B), "pruned")
    engine.dispose()


def test_the_job_prunes_after_a_failed_run_too_unless_told_to_keep_all(retrain_cfg: Callable[..., Config],
                                                                       models_dir: Path,
                                                                       tiny_trained: TrainedTiny) -> None:
    engine = make_engine(retrain_cfg().database_url)
    build(engine, models_dir, tiny_trained)
    label(retrain_cfg().database_url, fixture_mail("train", "spam"), "spam")  # no ham: training fails at once
    kept_all = job.run(retrain_cfg(keep_versions=0))
    assert kept_all.outcome == "failed" and kept_all.pruned == () and "pruned" not in statuses(engine).values()
    out = job.run(retrain_cfg(keep_versions=1))
    assert out.outcome == "failed" and out.pruned == (R1, R2, A)
    assert on_disk(models_dir) == [S, B, C, D]
    engine.dispose()


def test_the_gate_judges_only_a_holdout_with_enough_of_each_class() -> None:
    good = {"auc": 1.0, "fpr": 0.0}
    assert gate.judge({**good, "n": 20, "spam": 10}, good, 0.0, 0.0, min_per_class=10).promote
    for spam in (9, 11):  # one class short of ten
        refused = gate.judge({**good, "n": 20, "spam": spam}, good, 0.0, 0.0, min_per_class=10)
        assert not refused.promote and "too few to judge" in refused.reasons[0]
    assert not gate.judge({**good, "n": 5, "spam": 0}, None, 0.0, 0.0, min_per_class=0).promote  # never no spam


def test_a_holdout_too_small_for_the_gate_promotes_nothing(retrain_cfg: Callable[..., Config],
                                                           models_dir: Path) -> None:
    before = modelstore.active_version(models_dir)
    label_fixture_mail(retrain_cfg().database_url)
    out = job.run(retrain_cfg(gate_min_holdout=1_000))
    assert out.outcome == "rejected", out
    assert "too few to judge" in out.metrics["gate"]["reasons"][0]
    assert active(retrain_cfg().database_url) == before and modelstore.active_version(models_dir) == before


def test_a_candidate_trained_on_flipped_labels_is_rejected(retrain_cfg: Callable[..., Config],
                                                           models_dir: Path) -> None:
    cfg = retrain_cfg(from_scratch=True, epochs=6)
    before = modelstore.active_version(models_dir)
    label_fixture_mail(cfg.database_url, flip_training_part=True)
    out = job.run(cfg)
    assert out.outcome == "rejected", out
    assert out.metrics["candidate"]["auc"] < out.metrics["active"]["auc"] - cfg.training.gate_auc_tolerance
    assert any("AUC" in r for r in out.metrics["gate"]["reasons"])
    assert active(cfg.database_url) == before and load_active(cfg).version == before
    assert modelstore.active_version(models_dir) == before
    assert out.candidate in modelstore.list_versions(models_dir)  # kept, inactive, for inspection
    [run] = runs(cfg.database_url)
    assert (run.outcome, run.candidate_version) == ("rejected", out.candidate)


def test_a_trainer_killed_half_way_leaves_the_active_version_intact(retrain_cfg: Callable[..., Config],
                                                                    models_dir: Path) -> None:
    cfg = retrain_cfg(epochs=50)
    before = modelstore.active_version(models_dir)
    label_fixture_mail(cfg.database_url)
    child: list[BaseProcess] = []

    def kill_in_second_epoch(stage: str, done: int, total: int) -> None:
        if stage == "cnn epoch 2" and child and child[0].pid is not None:
            os.kill(child[0].pid, signal.SIGKILL)

    out = job.run(cfg, progress=kill_in_second_epoch, on_start=child.append)
    assert out.outcome == "failed" and "died" in out.error and "-9" in out.error
    assert modelstore.list_versions(models_dir) == [before]
    assert not [p for p in models_dir.iterdir() if p.name.startswith(".tmp-")]
    assert active(cfg.database_url) == before
    assert load_active(cfg).version == before  # weights intact: the sha256 check passes
    [run] = runs(cfg.database_url)
    assert (run.outcome, run.candidate_version) == ("failed", None) and "died" in run.error
    engine = make_engine(cfg.database_url)
    held = lock.acquire(engine, stale_after=3600)  # the lock was released
    assert held is not None
    held.release()
    engine.dispose()


def test_a_training_stopped_by_a_shutdown_is_recorded_failed_and_its_process_killed(
        retrain_cfg: Callable[..., Config], models_dir: Path) -> None:
    # `spamd serve` stopping (and `spamd retrain` sent SIGTERM) set child.STOP; the exit used to wait
    # for the training to end, and a service manager's SIGKILL then left the run "running" for good.
    cfg = retrain_cfg(epochs=50)
    before = modelstore.active_version(models_dir)
    label_fixture_mail(cfg.database_url)
    spawned: list[BaseProcess] = []
    try:
        out = job.run(cfg, progress=lambda stage, done, total: child.STOP.set(), on_start=spawned.append)
    finally:
        child.STOP.clear()
    assert out.outcome == "failed" and "shutting down" in out.error
    [run] = runs(cfg.database_url)
    assert run.outcome == "failed" and "shutting down" in run.error
    assert not spawned[0].is_alive() and active(cfg.database_url) == before
    engine = make_engine(cfg.database_url)
    held = lock.acquire(engine, stale_after=3600)  # released
    assert held is not None
    held.release()
    engine.dispose()


def test_no_copy_of_a_held_out_message_is_trained_on(retrain_cfg: Callable[..., Config], tmp_path: Path) -> None:
    # The holdout was cut from the labels alone, and the starter corpus then merged in: a held-out
    # message the starter also held was trained on (every one of them, for a site whose starter
    # corpus is its own labelled mail), and the gate judged the candidate on what it had learned.
    corpus = tmp_path / "starter-corpus"
    for kind, label_ in (("spam", "spam"), ("ham", "ham")):
        (corpus / kind).mkdir(parents=True)
        for n, raw in enumerate(fixture_mail("train", label_) + fixture_mail("starter", label_)):
            (corpus / kind / f"{n}.eml").write_bytes(raw)
    cfg = retrain_cfg(mix_starter=True, starter_corpus=str(corpus), gate_min_holdout=1)
    label_fixture_mail(cfg.database_url)
    out = job.run(cfg)
    counts = out.metrics["counts"]
    assert counts["starter"] == counts["labelled"] > 100 and counts["holdout"] > 10
    assert counts["train"] == counts["labelled"] - counts["holdout"]  # it was all of them


def test_a_copy_that_reads_the_same_is_left_out_with_the_held_out_message() -> None:
    # Two users' copies of one message differ in Delivered-To: two sha256, the same tokens.
    held = [Sample([5, 6, 7], 1, "sha-of-bobs-copy")]
    samples = [Sample([5, 6, 7], 1, "sha-of-carols-copy"), Sample([8, 9], 0, "other"), Sample([8, 9], 0, "again")]
    assert holdout.training_set(samples, held) == [Sample([8, 9], 0, "again")]


def test_a_second_trainer_is_turned_away_while_one_holds_the_lock(retrain_cfg: Callable[..., Config]) -> None:
    cfg = retrain_cfg()
    label_fixture_mail(cfg.database_url)
    engine = make_engine(cfg.database_url)
    held = lock.acquire(engine, stale_after=3600, holder="other-host:1:x")
    assert held is not None
    try:
        assert lock.acquire(engine, stale_after=3600) is None
        out = job.run(cfg)
        assert out.outcome == "busy" and runs(cfg.database_url) == []
    finally:
        held.release()
    again = lock.acquire(engine, stale_after=3600)
    assert again is not None
    again.release()
    engine.dispose()


def test_a_trainer_that_lost_its_lock_learns_it_at_its_next_refresh(retrain_db: str) -> None:
    # PostgreSQL: the lock lives with its connection, which a server restart, idle_session_timeout
    # or the network can end; SQLite: a row not refreshed in time is taken over. The first trainer
    # went on, beside a second one, and its release then raised and hid its run's outcome.
    engine = make_engine(retrain_db)
    first = lock.acquire(engine, stale_after=3600, holder="first:1:x")
    assert first is not None
    first.refresh()  # held: nothing said
    if engine.dialect.name == "postgresql":
        assert first.conn is not None
        pid = first.conn.scalar(text("SELECT pg_backend_pid()"))
        with engine.connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        second = lock.acquire(engine, stale_after=3600, holder="second:1:x")
    else:
        second = lock.acquire(engine, stale_after=0.0, holder="second:1:x")  # first's row counts as stale
    assert second is not None
    with pytest.raises(lock.LockLost):
        first.refresh()
    first.release()  # logged, not raised; and it leaves the second trainer's lock alone
    assert lock.acquire(engine, stale_after=3600) is None
    second.release()
    engine.dispose()


HOLD_LOCK = """
import sys, time
from spamd.db.engine import make_engine
from spamd.retrain import lock
held = lock.acquire(make_engine(sys.argv[1]), stale_after=3600, holder="doomed:1:x")
print("held" if held else "busy", flush=True)
time.sleep(600)
"""


def test_a_killed_trainers_lock_does_not_block_the_next(retrain_db: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, retrain_db], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
    engine = make_engine(retrain_db)
    try:
        assert lock.acquire(engine, stale_after=3600) is None
        proc.kill()
        proc.wait()
        if engine.dialect.name == "postgresql":  # the server drops the lock with the dead holder's connection
            deadline = time.monotonic() + 10
            after = lock.acquire(engine, stale_after=3600)
            while after is None and time.monotonic() < deadline:
                time.sleep(0.1)
                after = lock.acquire(engine, stale_after=3600)
        else:  # SQLite: the dead holder's row stays, and counts as stale once older than stale_after
            assert lock.acquire(engine, stale_after=3600) is None
            after = lock.acquire(engine, stale_after=0.0)
        assert after is not None
        after.release()
    finally:
        proc.kill()
        proc.stdout.close()
        engine.dispose()
