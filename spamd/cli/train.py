"""`spamd train --spam PATH --ham PATH`: train both networks from raw mail into a new version."""

from __future__ import annotations

import json
import sys

import click

from spamd import modelstore
from spamd.cli import config_option, get_config
from spamd.cli.common import Bar, expand_paths
from spamd.corpus import read_messages
from spamd.features import TokenizerConfig
from spamd.retrain.data import sample_of
from spamd.scorer import ScoringPolicy
from spamd.train import Sample, TrainConfig, train


@click.command("train")
@config_option
@click.option("--spam", multiple=True, required=True, help="Spam: file, dir, Maildir, mbox or @LIST (repeatable).")
@click.option("--ham", multiple=True, required=True, help="Ham: file, directory, Maildir, mbox or @LIST (repeatable).")
@click.option("--from", "parent", default=None, help="Start from this version's weights.")
@click.option("--epochs", type=int, default=None, help="Most epochs per network (default: from config).")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="torch device to train on, e.g. cuda.")
@click.option("--activate", is_flag=True, help="Make the new version the active one.")
@click.pass_context
def command(ctx: click.Context, spam: tuple[str, ...], ham: tuple[str, ...], parent: str | None,
            epochs: int | None, seed: int, device: str, activate: bool) -> None:
    """Train a new model version from directories of raw messages, Maildir folders or mbox files."""
    cfg = get_config(ctx)
    tok = TokenizerConfig()
    tag = cfg.scoring.subject_tag  # taken off the spam spamd tagged, when these are its deliveries
    samples_spam, bad_spam = read_samples(expand_paths(spam), 1, tok, tag)
    samples_ham, bad_ham = read_samples(expand_paths(ham), 0, tok, tag)
    unreadable = bad_spam + bad_ham
    samples = dedupe(samples_spam + samples_ham)
    click.echo(f"training on {sum(s.label for s in samples)} spam and "
               f"{sum(1 - s.label for s in samples)} ham ({unreadable} unreadable input(s) skipped)", err=True)
    parent_models = modelstore.load(cfg.models_dir, parent) if parent else None
    tcfg = TrainConfig(
        epochs=epochs or cfg.training.epochs,
        seed=seed,
        threads=cfg.training.threads,
        device=device,
        tokenizer=tok,
        policy=ScoringPolicy(rnn_rule=cfg.scoring.rnn_rule, uncertain_band=cfg.scoring.uncertain_band),
    )
    bar = Bar(disable=not sys.stderr.isatty())
    models = train(samples, tcfg, parent=parent_models, progress=bar)
    bar.close()
    path = modelstore.save(cfg.models_dir, models, new=True)
    if activate:
        modelstore.set_active(cfg.models_dir, models.version)
    click.echo(json.dumps({"version": models.version, "path": str(path), "activated": activate,
                           "threshold": models.manifest.threshold, "metrics": models.manifest.metrics}, indent=2))


def read_samples(paths: list[str], label: int, tok: TokenizerConfig, subject_tag: str = "") -> tuple[list[Sample], int]:
    """Read and tokenize messages; returns the samples and how many inputs were unreadable."""
    samples, bad = [], 0
    for item in read_messages(paths):
        if item.raw is None:
            click.echo(f"spamd: {item.source}: {item.error}", err=True)
            bad += 1
            continue
        samples.append(sample_of(item.raw, label, tok, subject_tag))
    return samples, bad


def dedupe(samples: list[Sample]) -> list[Sample]:
    """One sample per message; a message given as both spam and ham keeps its last label."""
    return list({s.key: s for s in samples}.values())
