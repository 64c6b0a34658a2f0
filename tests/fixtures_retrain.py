"""Fixtures for retraining: a config for the job, labelling fixture mail into the store, clean lock tables."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from spamd.config import Config, DatabaseConfig, ScoringConfig, TrainingConfig
from spamd.db.engine import make_engine
from spamd.db.labels import Labelling, apply_labels, prepare

# Quick settings: the tiny fixture models retrain in seconds, one thread, full priority; the gate
# judges the fixtures' small holdouts (a few of each class).
QUICK = TrainingConfig(epochs=3, threads=1, nice=0, mix_starter=False, holdout_fraction=0.25, poll_interval=0.3,
                       in_serve=False, gate_min_holdout=1)


def retrain_config(db_url: str, models_dir: Path, base_dir: Path, **training: Any) -> Config:
    return Config(scoring=ScoringConfig(models_dir=str(models_dir)), database=DatabaseConfig(url=db_url),
                  training=replace(QUICK, **training), base_dir=base_dir)


def label(db_url: str, raws: list[bytes], how: str, when: datetime | None = None) -> None:
    engine = make_engine(db_url)
    with Session(engine) as s, s.begin():
        apply_labels(s, [prepare(r) for r in raws], Labelling(how, "tests", "cli", when or datetime.now(UTC)))
    engine.dispose()


@pytest.fixture
def retrain_db(db_url: str) -> str:
    """db_url (SQLite and PostgreSQL), named for what the retraining tests use it for."""
    return db_url


@pytest.fixture
def retrain_cfg(retrain_db: str, models_dir: Path, tmp_path: Path) -> Callable[..., Config]:
    """Factory: a Config on the test's database and private tiny models, [training] overridable."""
    return lambda **training: retrain_config(retrain_db, models_dir, tmp_path, **training)
