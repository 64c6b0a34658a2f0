"""Training time for both networks on the SPLIT train rows, on CPU or GPU, and what the
model's size costs in accuracy (hashed-token table sizes, fp16 storage).

    python -m bench.train_speed --dump var/tokens.pt            # tokenize the corpus once
                                [--read-delivery-headers]       # as models before skip_delivery_headers
    python -m bench.train_speed --tokens var/tokens.pt [--device cuda] [--sweep] [--rnn-sweep]
                                [--cnn-sweep [SPEC ...]] [--seeds 1,2] [--cnn embed_dim=32,filters=64] [--save DIR]

The tokens file lets the run happen on a machine without the corpus (a lent GPU box).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from spamd import metrics
from spamd.features import TokenizerConfig
from spamd.modelstore import ModelSet, set_active
from spamd.modelstore import save as save_models
from spamd.nets.cnn import CNNConfig
from spamd.nets.rnn import RNNConfig
from spamd.retrain.data import sample_of
from spamd.scorer import Scorer, ScoringPolicy
from spamd.train import Sample, TrainConfig, train


def dump(path: Path, read_delivery_headers: bool = False) -> None:
    """Train rows as stored (as `make starter` reads them); test rows as received (`bench.accuracy`)."""
    from bench.corpus import rows

    tok = TokenizerConfig(skip_delivery_headers=not read_delivery_headers)
    data: dict[str, list[dict[str, object]]] = {"train": [], "test": []}
    for r in rows():
        s = sample_of(r.raw() if r.split == "train" else r.as_received(), r.label, tok)
        data[r.split].append({"ids": s.ids, "label": s.label, "key": s.key})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    print(f"wrote {path}: {len(data['train'])} train, {len(data['test'])} test")


def load(path: Path) -> tuple[list[Sample], list[Sample]]:
    data = torch.load(path, weights_only=True)
    as_samples = lambda xs: [Sample(x["ids"], x["label"], x["key"]) for x in xs]  # noqa: E731
    return as_samples(data["train"]), as_samples(data["test"])


def fp16_round_trip(models: ModelSet) -> ModelSet:
    """The weights as the version files store them (fp16), back in fp32."""
    for net in (models.cnn, models.rnn):
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(p.to(torch.float16).to(torch.float32))
    return models


def evaluate(models: ModelSet, test: list[Sample], rule: str = "uncertain") -> dict[str, float]:
    labels = [s.label for s in test]
    verdicts = Scorer(models, ScoringPolicy(rnn_rule=rule)).score_ids([s.ids for s in test])  # type: ignore[arg-type]
    rep = metrics.report([v.score for v in verdicts], labels, models.manifest.threshold)
    return {"one_minus_roca_pct": round(rep.one_minus_roca_pct, 4), "fpr": rep.fpr, "fnr": rep.fnr}


def long_subset(models: ModelSet, test: list[Sample]) -> dict[str, object]:
    """CNN alone against the combination, on the messages longer than the CNN's window."""
    long = [s for s in test if len(s.ids) > models.cnn.cfg.window]
    return {"n": len(long), "cnn_alone": evaluate(models, long, "never"), "combined": evaluate(models, long, "always")}


def cnn_config(text: str) -> CNNConfig:
    """`embed_dim=32,filters=64,widths=1+2+3` → the default CNNConfig with those changes."""
    changes: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in CNNConfig.__dataclass_fields__ or not value:
            raise argparse.ArgumentTypeError(f"not a CNN setting: {item!r}")
        changes[key] = tuple(int(w) for w in value.split("+")) if key == "widths" else type(
            getattr(CNNConfig(), key))(value)
    return replace(CNNConfig(), **changes)


def one_run(train_set: list[Sample], test: list[Sample], cfg: TrainConfig, save: Path | None = None) -> dict:
    started = time.monotonic()
    models = train(train_set, cfg)
    seconds = time.monotonic() - started
    if save is not None:
        set_active(save, save_models(save, models, new=True).name)
    params = sum(p.numel() for net in (models.cnn, models.rnn) for p in net.parameters())
    out = {"device": cfg.device, "threads": cfg.threads, "seed": cfg.seed, "cnn_buckets": cfg.cnn.buckets,
           "train_seconds": round(seconds, 1), "fp16_megabytes": round(params * 2 / 2**20, 1),
           "fp32": evaluate(models, test), "cnn_alone": evaluate(models, test, "never"),
           "validation": {k: models.manifest.metrics[k]["one_minus_roca_pct"]
                          for k in ("validation", "validation_cnn") if k in models.manifest.metrics}}
    out["long_subset"] = long_subset(models, test)
    out["rnn"] = {k: v for k, v in vars(cfg.rnn).items()}
    out["cnn"] = {k: v for k, v in vars(cfg.cnn).items()}
    out["fp16"] = evaluate(fp16_round_trip(models), test)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dump", type=Path)
    ap.add_argument("--read-delivery-headers", action="store_true",
                    help="--dump with the tokenizer reading delivery headers, as models trained before it skipped them")
    ap.add_argument("--tokens", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sweep", action="store_true", help="also train with other CNN table sizes")
    ap.add_argument("--rnn-sweep", action="store_true", help="also train RNN variants (size, stride)")
    ap.add_argument("--cnn-sweep", type=cnn_config, nargs="*", default=None, metavar="SPEC",
                    help="also train smaller CNNs, each with --seeds: the SPECs given (as --cnn's), "
                         "or without any, four that shrink embedding width, filters and filter widths")
    ap.add_argument("--seeds", default="1", help="comma-separated training seeds for each configuration")
    ap.add_argument("--cnn", type=cnn_config, default=CNNConfig(),
                    help="the first runs' CNN, as changes to the default: embed_dim=32,filters=64,widths=1+2+3")
    ap.add_argument("--save", type=Path, default=None,
                    help="models directory to save the first run's models into, as its active version "
                         "(for `bench.load --models`: what a network's size costs end to end)")
    ap.add_argument("--json", type=Path, default=Path("bench/out/train_speed.json"))
    args = ap.parse_args()
    if args.dump:
        return dump(args.dump, args.read_delivery_headers)
    train_set, test = load(args.tokens)
    base = TrainConfig(device=args.device, threads=args.threads)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu x{args.threads} threads"
    seeds = [int(x) for x in args.seeds.split(",")]
    runs = [one_run(train_set, test, replace(base, seed=seed, cnn=args.cnn), save=args.save if i == 0 else None)
            for i, seed in enumerate(seeds)]
    if args.sweep:
        for buckets in (1 << 14, 1 << 16, 1 << 19):
            runs.append(one_run(train_set, test, replace(base, cnn=replace(CNNConfig(), buckets=buckets))))
    if args.rnn_sweep:
        rnn_kws: list[dict[str, Any]] = [{"hidden": 96}, {"stride": 2}, {"hidden": 96, "embed_dim": 64, "stride": 2}]
        for kw in rnn_kws:
            runs.append(one_run(train_set, test, replace(base, rnn=replace(RNNConfig(), **kw))))
    if args.cnn_sweep is not None:
        cnn_kws: list[dict[str, Any]] = [{"embed_dim": 32, "filters": 64}, {"filters": 64}, {"widths": (1, 2, 3)},
                                         {"embed_dim": 32, "filters": 64, "widths": (1, 2, 3)}]
        for cnn in args.cnn_sweep or [replace(CNNConfig(), **kw) for kw in cnn_kws]:
            runs += [one_run(train_set, test, replace(base, seed=seed, cnn=cnn)) for seed in seeds]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"device": name, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
