"""Training a candidate and measuring it against the active version on the same holdout (no decisions)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.orm import Session

from spamd import metrics, modelstore
from spamd.config import Config
from spamd.db.store import opened
from spamd.features import TokenizerConfig
from spamd.modelstore import ModelSet
from spamd.nets.cnn import CNNConfig
from spamd.nets.rnn import RNNConfig
from spamd.retrain import data, holdout
from spamd.scorer import Scorer, ScoringPolicy
from spamd.train import Progress, Sample, TrainConfig, train

log = logging.getLogger("spamd.train")


@dataclass(frozen=True)
class Candidate:
    """A trained, saved (not yet registered) version and how it and the active one did on the holdout."""

    version: str
    counts: dict[str, int]  # labelled, starter, train, holdout
    candidate: dict[str, Any]  # holdout report
    active: dict[str, Any] | None
    seconds: dict[str, float]  # read, train, evaluate


def train_candidate(cfg: Config, active: str | None, progress: Progress | None = None) -> Candidate:
    """Read the mail, cut the holdout, train from the active version (or scratch), evaluate both, save."""
    t0 = time.monotonic()
    parent = modelstore.load(cfg.models_dir, active) if active else None
    # The parent's token space, so the candidate starts from its weights; but never the delivery
    # headers, whatever the parent read: labelled mail comes from mailboxes, where the final
    # delivery wrote them, and live mail reaches spamd without them (features.delivery_fields).
    tok = replace(parent.tokenizer, skip_delivery_headers=True) if parent else TokenizerConfig()
    with opened(cfg.database_url) as engine, Session(engine) as s:
        site = data.labelled(s, tok)
    starter = _starter(cfg, tok)
    train_part, held = holdout.split(site, cfg.training.holdout_fraction)
    samples = holdout.training_set([*starter, *train_part], held)  # the site's label over the starter's
    t1 = time.monotonic()
    log.info("training on %d messages (%d labelled, %d starter), %d held out", len(samples), len(site),
             len(starter), len(held))
    models = train(samples, train_config(cfg, parent, tok), None if cfg.training.from_scratch else parent, progress)
    t2 = time.monotonic()
    modelstore.save(cfg.models_dir, models, new=True)  # first: it may rename the version, which the report names
    policy = scoring_policy(cfg)
    report = evaluate(models, held, policy)
    # Both on the candidate's tokens, without the fields the mailboxes' delivery wrote: live mail
    # reaches spamd before any delivery, so an active version that reads them (one from before
    # skip_delivery_headers) is judged on what it sees live, not flattered by them.
    before = evaluate(parent, held, policy) if parent else None
    counts = {"labelled": len(site), "starter": len(starter), "train": len(samples), "holdout": len(held)}
    seconds = {"read": round(t1 - t0, 1), "train": round(t2 - t1, 1), "evaluate": round(time.monotonic() - t2, 1)}
    return Candidate(models.version, counts, report, before, seconds)


def _starter(cfg: Config, tok: TokenizerConfig) -> list[Sample]:
    if not (cfg.training.mix_starter and cfg.training.starter_corpus):
        return []
    return data.starter(cfg.path(cfg.training.starter_corpus), tok, cfg.scoring.subject_tag)


def train_config(cfg: Config, parent: ModelSet | None, tok: TokenizerConfig) -> TrainConfig:
    """The training settings; the architecture follows the active version, so its weights can seed the new one."""
    t = cfg.training
    base = TrainConfig(epochs=t.epochs, threads=t.threads, tokenizer=tok, policy=scoring_policy(cfg))
    if parent is None:
        return base
    cnn_args = {**parent.manifest.cnn_args, "widths": tuple(parent.manifest.cnn_args["widths"])}
    return TrainConfig(**{**base.__dict__, "cnn": CNNConfig(**cnn_args), "rnn": RNNConfig(**parent.manifest.rnn_args)})


def scoring_policy(cfg: Config) -> ScoringPolicy:
    s = cfg.scoring
    return ScoringPolicy(s.rnn_rule, s.uncertain_band, s.spam_threshold)


def evaluate(models: ModelSet, held: list[Sample], policy: ScoringPolicy) -> dict[str, Any]:
    """The holdout report at the version's working threshold (AUC None when one class is missing)."""
    scorer = Scorer(models, policy)
    scores = [v.score for v in scorer.score_ids([s.ids for s in held])]
    labels = [s.label for s in held]
    report: dict[str, Any] = metrics.report(scores, labels, scorer.threshold).to_dict()
    report = {k: (None if isinstance(v, float) and v != v else v) for k, v in report.items()}  # NaN is not JSON
    return {**report, "threshold": scorer.threshold, "version": models.version}
