"""`spamd score FILE...`: score messages from files and print one verdict per message."""

from __future__ import annotations

import json
import sys

import click
import torch

from spamd.cli import config_option, get_config
from spamd.cli.common import expand_paths, load_active
from spamd.corpus import read_messages
from spamd.scorer import Scorer, ScoringPolicy

BATCH = 64


@click.command("score")
@config_option
@click.argument("paths", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--model", "version", default=None, help="Model version (default: the active one).")
@click.option("--rnn-rule", type=click.Choice(["never", "uncertain", "long", "always"]), default=None,
              help="When the RNN is consulted (default: from config).")
@click.pass_context
def command(ctx: click.Context, paths: tuple[str, ...], as_json: bool, version: str | None,
            rnn_rule: str | None) -> None:
    """Score message files, directories, Maildirs or mbox files (`-` reads one message from stdin)."""
    cfg = get_config(ctx)
    torch.set_num_threads(cfg.scoring.threads)
    models = load_active(cfg, version)
    policy = ScoringPolicy(
        rnn_rule=rnn_rule or cfg.scoring.rnn_rule,  # type: ignore[arg-type]
        uncertain_band=cfg.scoring.uncertain_band,
        threshold=cfg.scoring.spam_threshold,
    )
    scorer = Scorer(models, policy)
    failed = scored = 0
    batch: list[tuple[str, bytes]] = []
    for item in read_messages(expand_paths(paths), sys.stdin.buffer):
        if item.raw is None:
            failed += 1
            click.echo(f"spamd: {item.source}: {item.error}", err=True)
            continue
        scored += 1
        batch.append((item.source, item.raw))
        if len(batch) >= BATCH:
            _emit(scorer, batch, as_json)
            batch = []
    _emit(scorer, batch, as_json)
    if not scored and not failed:  # an empty directory, or a Maildir with nothing in cur/ and new/
        click.echo(f"spamd: no message found in {' '.join(paths)}", err=True)
        sys.exit(1)
    if failed:
        click.echo(f"spamd: {failed} input(s) could not be read", err=True)
        sys.exit(1)


def _emit(scorer: Scorer, batch: list[tuple[str, bytes]], as_json: bool) -> None:
    verdicts = scorer.score([raw for _, raw in batch])
    for (source, _), v in zip(batch, verdicts, strict=False):
        if as_json:
            click.echo(json.dumps({
                "path": source, "score": round(v.score, 6), "verdict": v.label, "cnn": round(v.cnn, 6),
                "rnn": None if v.rnn is None else round(v.rnn, 6), "long_context": v.long_context,
                "model": v.model, "threshold": round(v.threshold, 6),
            }))
        else:
            rnn = "-" if v.rnn is None else f"{v.rnn:.3f}"
            flag = " long_context" if v.long_context else ""
            click.echo(f"{v.label:4} {v.score:.3f} cnn={v.cnn:.3f} rnn={rnn}{flag} {source}")
