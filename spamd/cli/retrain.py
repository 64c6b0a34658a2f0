"""`spamd retrain`: run the retrain job now, in the foreground, with a progress bar."""

from __future__ import annotations

import json
import signal
import sys

import click

from spamd.cli import config_option, get_config
from spamd.cli.common import Bar

EXIT_FAILED, EXIT_BUSY = 1, 75  # 75: EX_TEMPFAIL, try again when the other trainer is done


@click.command("retrain")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the run's outcome and metrics as JSON.")
@click.pass_context
def command(ctx: click.Context, as_json: bool) -> None:
    """Train a candidate on the labelled mail and promote it if it passes the gate.

    Exit status 0 when the candidate was promoted or rejected by the gate, 1 when
    training failed, 75 when another trainer holds the lock.
    """
    from spamd.retrain import child, job  # torch loads only for this command

    # SIGTERM stops the training and records the run failed, the trainer lock released (by default
    # it killed this process alone, and the training process went on without it).
    signal.signal(signal.SIGTERM, lambda _sig, _frame: child.STOP.set())
    bar = Bar(disable=not sys.stderr.isatty())
    try:
        out = job.run(get_config(ctx), progress=bar)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps({"outcome": out.outcome, "run": out.run_id, "active": out.active,
                               "candidate": out.candidate, "metrics": out.metrics, "error": out.error,
                               "pruned": list(out.pruned)}, indent=2))
    else:
        click.echo(summary(out.outcome, out.active, out.candidate, out.metrics, out.error))
        if out.pruned:
            click.echo(f"pruned: {' '.join(out.pruned)}")
    if out.outcome == "failed":
        sys.exit(EXIT_FAILED)
    if out.outcome == "busy":
        sys.exit(EXIT_BUSY)


def summary(outcome: str, active: str | None, candidate: str | None, metrics: dict[str, object], error: str) -> str:
    if outcome in ("failed", "busy"):
        return f"{outcome}: {error}"
    gate = metrics.get("gate", {})
    reasons = "; ".join(gate.get("reasons", [])) if isinstance(gate, dict) else ""
    return f"{outcome}: candidate {candidate} (active was {active}): {reasons}"
