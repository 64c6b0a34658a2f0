"""The `spamd` command line: one click group, one module per job (serve, score, train, label, logs...)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from spamd.config import Config, load_config
from spamd.errors import SpamdError


class Group(click.Group):
    """Turns any SpamdError into one clear line on stderr and exit status 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SpamdError as exc:
            click.echo(f"spamd: error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=Group)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="SPAMD_CONFIG",
              help="config.toml to use (default: $SPAMD_CONFIG, else the embedded defaults).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="spamd")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """spamd: a spam-filter SMTP proxy with neural models trained on your own mail."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = config_path


def get_config(ctx: click.Context) -> Config:
    """The config named by the group's --config (or a subcommand's own --config)."""
    root = ctx.find_root()
    if "config" not in root.meta:
        root.meta["config"] = load_config(root.obj)
    cfg: Config = root.meta["config"]
    return cfg


def config_option(f: Any) -> Any:
    """`--config` accepted after the subcommand too (`spamd score --config x.toml ...`)."""

    def store(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value:
            ctx.find_root().obj = value
            ctx.find_root().meta.pop("config", None)

    return click.option("--config", type=click.Path(dir_okay=False), expose_value=False,
                        callback=store, is_eager=True, help="config.toml to use.")(f)


def _register() -> None:
    from spamd.cli import db, label, labels, logs, models, retrain, runs, scheduler, score, serve, stats, train

    for module in (score, train, db, label, labels, logs, stats, serve, retrain, models, runs, scheduler):
        main.add_command(module.command)


_register()
