"""`spamd label spam|ham|forget [--user NAME] PATH...|-`: teach spamd from messages users sorted.

Inputs are files, directories, Maildir folders, mbox files or one message on stdin (what a
"report spam" button pipes in). Each chunk of messages is committed on its own, so an
interruption keeps what was done; an unreadable input is reported and skipped.
"""

from __future__ import annotations

import getpass
import sys
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime

import click
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session
from tqdm import tqdm

from spamd.cli import config_option, get_config
from spamd.cli.common import expand_paths
from spamd.corpus import Item, read_messages
from spamd.db import labels
from spamd.db.labels import Incoming, Labelling
from spamd.db.store import opened, unreachable
from spamd.errors import StoreError

CHUNK = 200
SUMMARY = {
    "label": ("added", "relabelled", "unchanged", "duplicate", "unreadable"),
    "forget": ("forgotten", "not labelled", "duplicate", "unreadable"),
}


@click.command("label")
@click.argument("action", type=click.Choice(["spam", "ham", "forget"]))
@click.argument("paths", nargs=-1, required=True)
@click.option("--user", default=None, help="Who is labelling (default: the login name).")
@config_option
@click.pass_context
def command(ctx: click.Context, action: str, paths: tuple[str, ...], user: str | None) -> None:
    """Label messages spam or ham (or forget their label): files, directories, Maildirs, mbox, or - for stdin."""
    cfg = get_config(ctx)
    url = cfg.database_url
    args = expand_paths(paths)
    how = Labelling(action, user or _login(), "pipe" if "-" in args else "cli", datetime.now(UTC))
    with opened(url) as engine:
        try:
            tally = _run(engine, read_messages(args, sys.stdin.buffer), how, cfg.scoring.subject_tag)
        except SQLAlchemyError as exc:
            raise unreachable(url, exc) from exc
    keys = SUMMARY["forget" if action == "forget" else "label"]
    click.echo(", ".join(f"{tally[k]} {k}" + (" (merged)" if k == "duplicate" else "") for k in keys))
    if tally["unreadable"]:
        sys.exit(1)


def _run(engine: Engine, items: Iterable[Item], how: Labelling, subject_tag: str) -> Counter[str]:
    tally: Counter[str] = Counter()
    seen: set[str] = set()
    chunk: list[Incoming] = []
    with tqdm(items, unit="msg", desc="labelling", leave=False, disable=not sys.stderr.isatty()) as bar:
        for item in bar:
            incoming = _prepare(item, tally, subject_tag)
            if incoming is None:
                continue
            if incoming.sha256 in seen:  # the same message twice in this run: merged into one
                tally["duplicate"] += 1
                continue
            seen.add(incoming.sha256)
            chunk.append(incoming)
            if len(chunk) >= CHUNK:
                tally.update(_store(engine, chunk, how))
                chunk = []
    tally.update(_store(engine, chunk, how))
    return tally


def _prepare(item: Item, tally: Counter[str], subject_tag: str) -> Incoming | None:
    if item.raw is None:
        tally["unreadable"] += 1
        click.echo(f"spamd: {item.source}: {item.error}", err=True)
        return None
    return labels.prepare(item.raw, subject_tag)  # [scoring] subject_tag comes off a copy spamd tagged


def _store(engine: Engine, chunk: list[Incoming], how: Labelling) -> Counter[str]:
    # A concurrent `spamd label` may add the same message between our SELECT and INSERT: retry once.
    for attempt in (1, 2):
        try:
            with Session(engine) as session, session.begin():
                return _apply(session, chunk, how)
        except IntegrityError as exc:
            if attempt == 2:
                raise StoreError(f"labelling failed twice on a conflicting insert: {exc.orig}") from exc
    raise AssertionError("unreachable")


def _apply(session: Session, chunk: list[Incoming], how: Labelling) -> Counter[str]:
    if not chunk:
        return Counter()
    if how.label == "forget":
        gone = labels.forget(session, (i.sha256 for i in chunk))
        return Counter(forgotten=len(gone), **{"not labelled": len(chunk) - len(gone)})
    return Counter(labels.apply_labels(session, chunk, how).values())


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
