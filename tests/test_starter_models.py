"""The committed starter models load, verify, and separate fixture mail drawn from the SPLIT test rows."""

from __future__ import annotations

from pathlib import Path

from spamd import metrics, modelstore
from spamd.scorer import Scorer
from tests.fixtures_models import fixture_mail

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_starter_models_are_active_and_intact() -> None:
    version = modelstore.active_version(MODELS)
    models = modelstore.load(MODELS, version)  # checks every weight file's sha256
    assert models.manifest.train_counts["spam"] > 1000 and models.manifest.train_counts["ham"] > 2000


def test_starter_models_separate_unseen_spam_and_ham() -> None:
    models = modelstore.load(MODELS, modelstore.active_version(MODELS))
    scorer = Scorer(models)
    spam = scorer.score(fixture_mail("starter", "spam"))
    ham = scorer.score(fixture_mail("starter", "ham"))
    scores = [v.score for v in spam + ham]
    labels = [1] * len(spam) + [0] * len(ham)
    assert metrics.roc_auc(scores, labels) > 0.99
    assert sum(v.is_spam for v in spam) >= 0.9 * len(spam)
    assert sum(v.is_spam for v in ham) <= 1


def test_committed_model_files_stay_small() -> None:
    total = sum(p.stat().st_size for p in MODELS.rglob("*.safetensors"))
    assert total <= 25 * 1024 * 1024
