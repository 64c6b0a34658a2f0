"""`spamd serve`: run the SMTP proxy daemon until SIGTERM (SIGHUP reloads config and models)."""

from __future__ import annotations

import logging
from dataclasses import replace

import click

from spamd.cli import config_option, get_config


@click.command("serve")
@config_option
@click.option("--listen", default=None, help="host:port to listen on (default: [smtp] listen).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes sharing the port (default: [smtp] workers).")
@click.option("--delivery", default=None,
              help="smtp://host:port, smtps://host:port or maildir:PATH (default: [delivery] url).")
@click.pass_context
def command(ctx: click.Context, listen: str | None, workers: int | None, delivery: str | None) -> None:
    """Accept mail over SMTP, score it, tag/reject it and pass it on to the configured downstream."""
    from spamd.smtp import hup

    hup.defer()  # before torch loads: a SIGHUP meanwhile is a reload once spamd is up, not its end
    from spamd.retrain.scheduler import in_daemon
    from spamd.smtp.workers import serve  # torch and aiosmtpd load only for this command

    cfg = get_config(ctx)
    smtp = replace(cfg.smtp, listen=listen or cfg.smtp.listen, workers=workers or cfg.smtp.workers)
    cfg = replace(cfg, smtp=smtp, delivery=replace(cfg.delivery, url=delivery or cfg.delivery.url))
    level = logging.getLogger().getEffectiveLevel()
    logging.getLogger("mail.log").setLevel(max(level, logging.WARNING))  # aiosmtpd logs every command at INFO
    with in_daemon(cfg):  # the scheduled retrain and score-log purge, unless [training] in_serve = false
        serve(cfg, ctx.find_root().obj, level)
