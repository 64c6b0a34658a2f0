"""`spamd scheduler`: the retrain and purge jobs without the proxy, for sites that train off the mail hosts."""

from __future__ import annotations

import signal
import threading

import click

from spamd.cli import config_option, get_config


@click.command("scheduler")
@config_option
@click.pass_context
def command(ctx: click.Context) -> None:
    """Run the scheduled jobs (retrain, score-log purge) until SIGTERM or SIGINT."""
    from spamd.retrain import scheduler  # torch loads only for this command

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: stop.set())
    sched = scheduler.start(get_config(ctx))
    try:
        stop.wait()
    finally:
        sched.shutdown(wait=True)  # a retrain in progress finishes and records its run
