"""Accuracy on the SPLIT test rows: CNN alone, RNN alone, each RNN rule, the long-message
subset, and bogofilter trained on the same train rows in the same run.

    python -m bench.accuracy [--model VERSION] [--config config.toml] [--json bench/out/accuracy.json] [--as-stored]

Messages are scored as spamd in front of the collecting site's MTA would have seen them: without
the fields the final delivery wrote on top (`Row.as_received`); bogofilter is trained and tested on
the same bytes. `--as-stored` scores the corpus files as they are, delivery fields and all.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench.corpus import Bogofilter, Row, machine, rows, write_as_received
from spamd import metrics
from spamd.cli.common import load_active
from spamd.config import load_config
from spamd.scorer import Scorer, ScoringPolicy, encode
from spamd.train import Sample, logits

BOGO_CUTOFF = 0.99  # bogofilter's default spam_cutoff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None)
    ap.add_argument("--config", default=None)
    ap.add_argument("--json", default="bench/out/accuracy.json")
    ap.add_argument("--no-bogofilter", action="store_true")
    ap.add_argument("--as-stored", action="store_true",
                    help="score the corpus files as they are (delivery fields and all)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    models = load_active(load_config(args.config), args.model)
    test = rows("test")
    labels = [r.label for r in test]
    ids = [encode(r.raw() if args.as_stored else r.as_received(), models) for r in test]
    th = models.manifest.threshold
    results: dict[str, dict] = {}
    cnn_only = [v.score for v in Scorer(models, ScoringPolicy(rnn_rule="never")).score_ids(ids)]
    samples = [Sample(i, y, "") for i, y in zip(ids, labels, strict=False)]
    rnn_only = [torch.sigmoid(torch.tensor(z)).item() for z in logits(models.rnn, samples, models.rnn.cfg.window)]
    results["cnn alone"] = metrics.report(cnn_only, labels, th).to_dict()
    results["rnn alone"] = metrics.report(rnn_only, labels, th).to_dict()
    for rule in ("uncertain", "long", "always"):
        verdicts = Scorer(models, ScoringPolicy(rnn_rule=rule)).score_ids(ids)  # type: ignore[arg-type]
        rep = metrics.report([v.score for v in verdicts], labels, th).to_dict()
        rep["rnn_consulted"] = sum(v.rnn is not None for v in verdicts)
        rep["long_context_flags"] = sum(v.long_context for v in verdicts)
        results[f"combined, rnn_rule={rule}"] = rep
    long_idx = [i for i, x in enumerate(ids) if len(x) > models.cnn.cfg.window]
    sub = lambda xs: [xs[i] for i in long_idx]  # noqa: E731
    always = [v.score for v in Scorer(models, ScoringPolicy(rnn_rule="always")).score_ids(ids)]
    results["long subset: cnn alone"] = metrics.report(sub(cnn_only), sub(labels), th).to_dict()
    results["long subset: rnn alone"] = metrics.report(sub(rnn_only), sub(labels), th).to_dict()
    results["long subset: combined"] = metrics.report(sub(always), sub(labels), th).to_dict()
    if not args.no_bogofilter:
        results.update(bogofilter_results(test, labels, long_idx, args.as_stored))
    out = {"machine": machine(), "model": models.version, "threshold": th, "test_rows": len(test),
           "messages": "as stored" if args.as_stored else "as received",
           "long_messages": len(long_idx), "cnn_window": models.cnn.cfg.window, "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print_table(out)


def bogofilter_results(test: list[Row], labels: list[int], long_idx: list[int], as_stored: bool) -> dict[str, dict]:
    bogo = Bogofilter()
    with tempfile.TemporaryDirectory(prefix="as-received-") as tmp:
        train = rows("train")
        if as_stored:
            train_paths, test_paths = [r.path for r in train], [r.path for r in test]
        else:
            (Path(tmp) / "train").mkdir()
            (Path(tmp) / "test").mkdir()
            train_paths = write_as_received(train, Path(tmp) / "train")
            test_paths = write_as_received(test, Path(tmp) / "test")
        try:
            started = time.monotonic()
            bogo.train([p for p, r in zip(train_paths, train, strict=True) if r.label],
                       [p for p, r in zip(train_paths, train, strict=True) if not r.label])
            trained = time.monotonic() - started
            scores = bogo.score(test_paths)
        finally:
            bogo.close()
    res = {"bogofilter 1.2.5": {**metrics.report(scores, labels, BOGO_CUTOFF).to_dict(),
                                "train_seconds": round(trained, 1)}}
    res["long subset: bogofilter"] = metrics.report([scores[i] for i in long_idx],
                                                    [labels[i] for i in long_idx], BOGO_CUTOFF).to_dict()
    return res


def print_table(out: dict) -> None:
    print(f"model {out['model']}, threshold {out['threshold']:.4f}, {out['test_rows']} test rows {out['messages']} "
          f"({out['long_messages']} longer than the CNN window of {out['cnn_window']} tokens); {out['machine']}")
    print("| scorer | (1-ROCA)% | FPR | FNR | recall @FPR≤0.1% | recall @FPR≤0.5% |")
    print("|---|---|---|---|---|---|")
    for name, r in out["results"].items():
        print(f"| {name} | {r['one_minus_roca_pct']:.4f} | {100 * r['fpr']:.2f}% | {100 * r['fnr']:.2f}% | "
              f"{100 * r['recall_at_fpr_0_1']:.1f}% | {100 * r['recall_at_fpr_0_5']:.1f}% |")


if __name__ == "__main__":
    main()
