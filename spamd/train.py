"""Training: a plain, seeded loop for each network, early stopping on validation, then the
combiner and the working threshold fit on the validation part. No I/O: callers read mail
and write the version (see `spamd.modelstore`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import torch
from torch import nn

from spamd import metrics
from spamd.combine import Combiner, consult_rnn, fit_combiner, sigmoid
from spamd.errors import TrainingError
from spamd.features import TokenizerConfig
from spamd.modelstore import Manifest, ModelSet, build, new_version_name
from spamd.nets.cnn import CNNConfig
from spamd.nets.rnn import RNNConfig
from spamd.scorer import Scorer, ScoringPolicy, pad

log = logging.getLogger("spamd.train")

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class Sample:
    ids: list[int]
    label: int  # 1 spam, 0 ham
    key: str  # sha256 of the message: decides the validation split, stably


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    patience: int = 3  # epochs without validation improvement before stopping
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.15
    seed: int = 1
    threads: int = 2
    device: str = "cpu"  # "cuda" trains on a GPU when there is one; scoring always loads to CPU
    ham_cost: float = 4.0  # a false positive costs this many false negatives when choosing the threshold
    cnn: CNNConfig = field(default_factory=CNNConfig)
    rnn: RNNConfig = field(default_factory=RNNConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    policy: ScoringPolicy = field(default_factory=ScoringPolicy)


def split(samples: Sequence[Sample], val_fraction: float) -> tuple[list[Sample], list[Sample]]:
    """Deterministic train/validation split by each message's sha256."""
    cut = int(val_fraction * 10_000)
    train: list[Sample] = []
    val: list[Sample] = []
    for s in samples:
        bucket = int(hashlib.sha256(("val:" + s.key).encode()).hexdigest()[:8], 16) % 10_000
        (val if bucket < cut else train).append(s)
    return train, val


def train(
    samples: Sequence[Sample],
    cfg: TrainConfig,
    parent: ModelSet | None = None,
    progress: Progress | None = None,
) -> ModelSet:
    """Train both networks and return an unsaved ModelSet with its manifest filled in."""
    if len({s.label for s in samples}) < 2:
        raise TrainingError("training needs both spam and ham messages")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tr, val = split(samples, cfg.val_fraction)
    if len({s.label for s in val}) < 2:
        tr, val = list(samples), list(samples)  # too few to hold out: validate on what we have
    cnn, rnn = build(cfg.cnn, cfg.rnn)
    if parent is not None:
        _warm_start(cnn, parent.cnn)
        _warm_start(rnn, parent.rnn)
    started = time.monotonic()
    fit(cnn.to(cfg.device), tr, val, cfg, cfg.cnn.window, "cnn", progress)
    fit(rnn.to(cfg.device), tr, val, cfg, cfg.rnn.window, "rnn", progress)
    cnn_val, rnn_val = logits(cnn, val, cfg.cnn.window), logits(rnn, val, cfg.rnn.window)
    cnn, rnn = cnn.cpu(), rnn.cpu()
    labels = [s.label for s in val]
    combiner = _fit_combiner(cnn_val, rnn_val, val, cfg)
    manifest = Manifest(
        version=new_version_name(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        cnn_args=asdict(cfg.cnn),
        rnn_args=asdict(cfg.rnn),
        tokenizer=cfg.tokenizer.to_dict(),
        threshold=0.5,
        combiner=combiner.to_dict(),
        train_counts={
            "spam": sum(s.label for s in tr),
            "ham": sum(1 - s.label for s in tr),
            "val_spam": sum(labels),
            "val_ham": len(labels) - sum(labels),
        },
        parent=parent.version if parent else None,
    )
    models = ModelSet(manifest=manifest, cnn=cnn, rnn=rnn)
    verdicts = Scorer(models, cfg.policy).score_ids([s.ids for s in val])
    final = [v.score for v in verdicts]
    threshold = metrics.choose_threshold(final, labels, cfg.ham_cost)
    cnn_scores = [sigmoid(z) for z in cnn_val]
    rnn_scores = [sigmoid(z) for z in rnn_val]
    models.manifest = Manifest(
        **{
            **asdict(manifest),
            "threshold": threshold,
            "metrics": {
                "validation": metrics.report(final, labels, threshold).to_dict(),
                "validation_cnn": metrics.report(cnn_scores, labels, threshold).to_dict(),
                "validation_rnn": metrics.report(rnn_scores, labels, threshold).to_dict(),
                "train_seconds": round(time.monotonic() - started, 1),
            },
        }
    )
    return models


def fit(
    net: nn.Module,
    tr: Sequence[Sample],
    val: Sequence[Sample],
    cfg: TrainConfig,
    window: int,
    name: str,
    progress: Progress | None,
) -> None:
    """Plain loop: AdamW, BCE on logits, keep the weights of the best validation epoch."""
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    labels = [s.label for s in val]
    best, best_state, stale = float("inf"), copy.deepcopy(net.state_dict()), 0
    for epoch in range(cfg.epochs):
        net.train()
        batches = _batches(tr, cfg.batch_size, window, rng)
        for n, batch in enumerate(batches):
            x = pad([s.ids for s in batch], window).to(cfg.device, non_blocking=True)  # (B, T)
            y = torch.tensor([float(s.label) for s in batch], device=cfg.device)  # (B,)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            if progress:
                progress(f"{name} epoch {epoch + 1}", n + 1, len(batches))
        val_loss = _bce(logits(net, val, window), labels)
        log.info("%s epoch %d: validation loss %.4f", name, epoch + 1, val_loss)
        if val_loss < best - 1e-4:
            best, best_state, stale = val_loss, copy.deepcopy(net.state_dict()), 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    net.load_state_dict(best_state)
    net.eval()


@torch.inference_mode()
def logits(net: nn.Module, samples: Sequence[Sample], window: int, batch_size: int = 64) -> list[float]:
    net.eval()
    device = next(net.parameters()).device
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].ids))
    out = [0.0] * len(samples)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        for j, z in zip(idx, net(pad([samples[k].ids for k in idx], window).to(device)).tolist(), strict=False):
            out[j] = z
    return out


def _fit_combiner(cnn_val: list[float], rnn_val: list[float], val: Sequence[Sample], cfg: TrainConfig) -> Combiner:
    """Fit the combiner on the validation messages the RNN rule would consult (else on all).

    The combination only ever applies to those messages, so that is where it should be
    good; with too few of them to fit two weights, all validation messages are used.
    """
    rule, band, window = cfg.policy.rnn_rule, cfg.policy.uncertain_band, cfg.cnn.window
    asked = [i for i, s in enumerate(val) if consult_rnn(rule, sigmoid(cnn_val[i]), len(s.ids), window, band)]
    if len(asked) < 30 or len({val[i].label for i in asked}) < 2:
        asked = list(range(len(val)))
    return fit_combiner([cnn_val[i] for i in asked], [rnn_val[i] for i in asked], [val[i].label for i in asked])


def _batches(samples: Sequence[Sample], size: int, window: int, rng: random.Random) -> list[list[Sample]]:
    """Shuffled batches of similar length, so padding wastes little time."""
    order = list(samples)
    rng.shuffle(order)
    chunks = [order[i : i + size * 50] for i in range(0, len(order), size * 50)]
    batches = []
    for chunk in chunks:
        chunk.sort(key=lambda s: min(len(s.ids), window))
        batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(batches)
    return batches


def _bce(zs: Sequence[float], ys: Sequence[int]) -> float:
    z = torch.tensor(zs)
    y = torch.tensor([float(v) for v in ys])
    return float(nn.functional.binary_cross_entropy_with_logits(z, y))


def _warm_start(net: nn.Module, parent: nn.Module) -> None:
    """Start from the parent's weights where the shapes agree (the token space is stable)."""
    own = net.state_dict()
    shared = {k: v for k, v in parent.state_dict().items() if k in own and own[k].shape == v.shape}
    net.load_state_dict({**own, **shared})
