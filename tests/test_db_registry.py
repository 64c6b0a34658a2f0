"""Model registry and training runs: one active version at a time, runs recorded with their outcome."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from spamd.db import registry
from spamd.db.schema import ModelVersion
from spamd.errors import ModelNotFound

T0 = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)


def version(name: str, created: datetime) -> ModelVersion:
    return ModelVersion(version=name, kind="cnn+rnn", path=f"models/{name}", sha256="0" * 64, created_at=created,
                        trained_on_labels=120, metrics={"auc": 0.99}, status="candidate")


def test_activating_retires_the_previous_version(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        registry.add_version(s, version("v1", T0))
        registry.add_version(s, version("v2", T0 + timedelta(days=1)))
        registry.activate(s, "v1", T0)
    with Session(engine) as s, s.begin():
        registry.activate(s, "v2", T0 + timedelta(days=1))
    with Session(engine) as s:
        assert [(v.version, v.status) for v in registry.list_versions(s)] == [("v2", "active"), ("v1", "retired")]
        active = registry.active_version(s)
        assert active is not None and active.activated_at == T0 + timedelta(days=1)
        assert active.metrics == {"auc": 0.99}
    with Session(engine) as s, s.begin(), pytest.raises(ModelNotFound):
        registry.activate(s, "v9", T0)


def test_training_runs_are_recorded(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        run_id = registry.start_run(s, T0, active="v1", labels=300).id
    with Session(engine) as s, s.begin():
        registry.finish_run(s, run_id, T0 + timedelta(minutes=5), "rejected", candidate="v2",
                            metrics={"auc": 0.97}, error="")
    with Session(engine) as s:
        run = registry.last_run(s)
        assert run is not None and (run.outcome, run.candidate_version, run.labels) == ("rejected", "v2", 300)
        assert run.finished_at == T0 + timedelta(minutes=5)
    with Session(engine) as s, s.begin(), pytest.raises(ValueError):
        registry.finish_run(s, run_id, T0, "running")
