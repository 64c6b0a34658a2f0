"""Adaptation: the situation of a new site. A base version trained on the older half of the corpus,
then the retrain job run on K labels from the newer half, evaluated on the newer half's test rows,
next to bogofilter trained on the same K labels and on the base rows + K, in the same run.

    python -m bench.adaptation [--ks 50,200,1000,all] [--epochs 10] [--json bench/out/adaptation.json] [--as-stored]

Older half: SPLIT train rows of easy_ham, hard_ham, spam. Newer half: easy_ham_2, spam_2.
The retrain job runs as configured by default (warm start from the base version, a 20% holdout of
the K labels, the gate), with the older half as its starter corpus, mixed in (the shipped config
names no starter corpus, so a site retrains on its own labels alone).

The labels and the starter corpus are the files as stored, as a site's mailboxes hold its mail;
the test rows are scored as received (`Row.as_received`: as spamd in front of the collecting
site's MTA would have seen them), as in bench/accuracy.py, and bogofilter is trained and tested on
the same bytes as received. `--as-stored` scores and trains everything on the files as stored.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session

from bench.corpus import Bogofilter, Row, machine, rows, write_as_received
from spamd import metrics, modelstore
from spamd.config import Config, DatabaseConfig, ScoringConfig, TrainingConfig
from spamd.db import migrate
from spamd.db.engine import make_engine
from spamd.db.labels import Labelling, apply_labels, prepare
from spamd.features import TokenizerConfig
from spamd.registry import now
from spamd.retrain import job
from spamd.retrain.data import sample_of
from spamd.scorer import Scorer, ScoringPolicy, encode
from spamd.train import TrainConfig, train

OLD, NEW = ("easy_ham", "hard_ham", "spam"), ("easy_ham_2", "spam_2")
BOGO_CUTOFF = 0.99  # bogofilter's default spam_cutoff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ks", default="50,200,1000,all")
    ap.add_argument("--epochs", type=int, default=TrainingConfig().epochs)
    ap.add_argument("--json", default="bench/out/adaptation.json")
    ap.add_argument("--as-stored", action="store_true",
                    help="score the test rows, and train and test bogofilter, on the files as stored")
    args = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="adaptation-"))
    old, new, test = rows("train", OLD), rows("train", NEW), rows("test", NEW)
    test_raw = [r.raw() if args.as_stored else r.as_received() for r in test]
    labels = [r.label for r in test]
    bogo = BogofilterRun(work, test, labels, args.as_stored)
    base_dir, base, base_secs = train_base(work, old, args.epochs)
    out: dict[str, Any] = {"machine": machine(), "epochs": args.epochs, "old_train": len(old), "new_train": len(new),
                           "new_test": len(test), "test_messages": "as stored" if args.as_stored else "as received",
                           "base_train_seconds": base_secs,
                           "base": evaluate(modelstore.load(base_dir, base), test_raw, labels),
                           "bogofilter_base": bogo.run([], old), "runs": []}
    starter = write_split(work, old)
    picked = random.Random(1).sample(new, len(new))
    for k in [len(new) if k == "all" else int(k) for k in args.ks.split(",")]:
        out["runs"].append(adapt(work, base_dir, base, starter, picked[:k], old, bogo, test_raw, labels, args.epochs))
        print(json.dumps(out["runs"][-1]["summary"]), file=sys.stderr, flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print_table(out)
    shutil.rmtree(work, ignore_errors=True)


def train_base(work: Path, old: list[Row], epochs: int) -> tuple[Path, str, float]:
    tok = TokenizerConfig()
    samples = [sample_of(r.raw(), r.label, tok) for r in old]
    started = time.monotonic()
    models = train(samples, TrainConfig(epochs=epochs, threads=2, tokenizer=tok))
    secs = round(time.monotonic() - started, 1)
    base_dir = work / "base"
    modelstore.save(base_dir, models)
    return base_dir, models.version, secs


def write_split(work: Path, old: list[Row]) -> Path:
    """The older half as the retrain job's starter corpus: a SPLIT.tsv of absolute paths."""
    d = work / "starter"
    d.mkdir()
    lines = ["path\tlabel\tsplit"] + [f"{r.path}\t{'spam' if r.label else 'ham'}\ttrain" for r in old]
    (d / "SPLIT.tsv").write_text("\n".join(lines) + "\n")
    return d


def adapt(work: Path, base_dir: Path, base: str, starter: Path, chosen: list[Row], old: list[Row],
          bogo: BogofilterRun, test_raw: list[bytes], labels: list[int], epochs: int) -> dict[str, Any]:
    """One site: the base version active, K labels in a fresh store, the retrain job run once."""
    site = work / f"k{len(chosen)}"
    shutil.copytree(base_dir, site / "models")
    modelstore.set_active(site / "models", base)
    url = f"sqlite:///{site / 'spamd.db'}"
    migrate.upgrade(url)
    label(url, chosen)
    training = replace(TrainingConfig(), epochs=epochs, threads=2, nice=0, starter_corpus=str(starter))
    cfg = Config(scoring=ScoringConfig(models_dir=str(site / "models")), database=DatabaseConfig(url=url),
                 training=training, base_dir=site)
    started = time.monotonic()
    result = job.run(cfg)
    secs = round(time.monotonic() - started, 1)
    cand = evaluate(modelstore.load(site / "models", result.candidate), test_raw, labels) if result.candidate else None
    bogo_k = bogo.run(chosen, [])
    run = {"k": len(chosen), "outcome": result.outcome, "retrain_seconds": secs, "error": result.error,
           "job_metrics": result.metrics, "candidate": cand, "bogofilter_k": bogo_k,
           "bogofilter_base_plus_k": bogo.run(chosen, old)}
    run["summary"] = {"k": len(chosen), "outcome": result.outcome, "seconds": secs,
                      "candidate_1-roca%": cand and cand["one_minus_roca_pct"],
                      "bogo_k_1-roca%": bogo_k["one_minus_roca_pct"]}
    return run


def label(url: str, chosen: list[Row]) -> None:
    engine = make_engine(url)
    for how in ("spam", "ham"):
        items = [prepare(r.raw()) for r in chosen if r.label == (how == "spam")]
        with Session(engine) as s, s.begin():
            apply_labels(s, items, Labelling(how, "bench", "cli", now()))
    engine.dispose()


def evaluate(models: modelstore.ModelSet, raws: list[bytes], labels: list[int]) -> dict[str, Any]:
    scorer = Scorer(models, ScoringPolicy())
    verdicts = scorer.score_ids([encode(raw, models) for raw in raws])
    return {**metrics.report([v.score for v in verdicts], labels, scorer.threshold).to_dict(),
            "version": models.version, "threshold": scorer.threshold}


class BogofilterRun:
    """bogofilter beside spamd: trained afresh on some rows, scored on the test rows, each as
    received (files written once, under `work`) or as stored."""

    def __init__(self, work: Path, test: list[Row], labels: list[int], as_stored: bool) -> None:
        self.work, self.labels, self.as_stored = work, labels, as_stored
        self.paths: dict[Path, Path] = {}
        self.test = self._paths(test)

    def _paths(self, chosen: list[Row]) -> list[Path]:
        if self.as_stored:
            return [r.path for r in chosen]
        new = [r for r in chosen if r.path not in self.paths]
        if new:
            folder = Path(tempfile.mkdtemp(dir=self.work, prefix="as-received-"))
            self.paths.update(zip([r.path for r in new], write_as_received(new, folder), strict=True))
        return [self.paths[r.path] for r in chosen]

    def run(self, chosen: list[Row], base: list[Row]) -> dict[str, Any]:
        trained = base + chosen
        paths = self._paths(trained)
        bogo = Bogofilter()
        try:
            started = time.monotonic()
            bogo.train([p for p, r in zip(paths, trained, strict=True) if r.label],
                       [p for p, r in zip(paths, trained, strict=True) if not r.label])
            secs = round(time.monotonic() - started, 1)
            scores = bogo.score(self.test)
        finally:
            bogo.close()
        return {**metrics.report(scores, self.labels, BOGO_CUTOFF).to_dict(), "train_seconds": secs}


def print_table(out: dict[str, Any]) -> None:
    print(f"newer-half test rows: {out['new_test']} {out['test_messages']}; base trained on {out['old_train']} "
          f"older-half rows in {out['base_train_seconds']} s; epochs {out['epochs']}; {out['machine']}")
    print("| K | scorer | outcome | (1-ROCA)% | FPR | FNR | retrain s |")
    print("|---|---|---|---|---|---|---|")
    row(out["base"], "0", "base version", "", "")
    row(out["bogofilter_base"], "0", "bogofilter, base rows", "", out["bogofilter_base"]["train_seconds"])
    for r in out["runs"]:
        if r["candidate"]:
            row(r["candidate"], r["k"], "spamd retrained", r["outcome"], r["retrain_seconds"])
        row(r["bogofilter_k"], r["k"], "bogofilter, K only", "", r["bogofilter_k"]["train_seconds"])
        both = r["bogofilter_base_plus_k"]
        row(both, r["k"], "bogofilter, base + K", "", both["train_seconds"])


def row(m: dict[str, Any], k: object, name: str, outcome: str, secs: object) -> None:
    print(f"| {k} | {name} | {outcome} | {m['one_minus_roca_pct']:.4f} | {100 * m['fpr']:.2f}% | "
          f"{100 * m['fnr']:.2f}% | {secs} |")


if __name__ == "__main__":
    main()
