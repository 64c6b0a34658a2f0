"""The `spamd` command line: one click group, one module per job (serve, score, train, label, logs...)."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from spamd.config import Config, load_config
from spamd.errors import SpamdError

# Each subcommand lives in its own module, imported only when it runs: `spamd logs` answers
# in milliseconds instead of waiting for torch to import.
COMMANDS = {
    "serve": "spamd.cli.serve",
    "score": "spamd.cli.score",
    "train": "spamd.cli.train",
    "label": "spamd.cli.label",
    "labels": "spamd.cli.labels",
    "logs": "spamd.cli.logs",
    "stats": "spamd.cli.stats",
    "db": "spamd.cli.db",
    "retrain": "spamd.cli.retrain",
    "models": "spamd.cli.models",
    "runs": "spamd.cli.runs",
    "scheduler": "spamd.cli.scheduler",
}


class Group(click.Group):
    """Loads subcommands on demand; turns any SpamdError into one clear line and exit status 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        command: click.Command = importlib.import_module(COMMANDS[cmd_name]).command
        return command

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


