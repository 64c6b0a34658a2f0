"""Repository of labelled mail: add or relabel, forget, count, and read back for training.

A message is keyed by the sha256 of its bytes as spamd learns from them (`as_learned`: as spamd
scored them, every X-Spam-* header removed along with what a delivery wrote above spamd's, and with
LF line endings, so that a copy kept with CRLF and one with LF are one message); those bytes are
what is stored (zlib-compressed), so `sha256(raw)` always matches the key.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from spamd.db.schema import LabelledMessage
from spamd.mail.headers import SPAM_ID, as_learned, fingerprint, split_header_block
from spamd.mail.parse import parse

LABELS = ("spam", "ham")
SOURCES = ("cli", "pipe", "http")


@dataclass(frozen=True)
class Incoming:
    """A message ready to be labelled: its key, its stored bytes, and what `spamd labels` shows."""

    sha256: str
    raw: bytes  # `as_learned`, uncompressed
    message_id: str
    subject: str
    score_log_id: str | None  # the X-Spam-Id spamd gave it, tying the label to its verdict


@dataclass(frozen=True)
class Labelling:
    """Who labels, how, and when."""

    label: str
    user: str
    source: str
    when: datetime


def prepare(raw: bytes, subject_tag: str = "") -> Incoming:
    """Key and describe a raw message (pure, never raises); `subject_tag` is the one spamd puts on
    spam ([scoring] subject_tag), taken off a delivered copy it tagged."""
    m = SPAM_ID.search(split_header_block(raw)[0])
    # What spamd scored, from a delivered copy: copies in several mailboxes, whatever their line
    # endings, are one message, and the retrain learns what spamd sees live, not what each
    # mailbox's delivery added on top.
    stripped = as_learned(raw, subject_tag)
    mail = parse(stripped)
    return Incoming(
        sha256=fingerprint(stripped),
        raw=stripped,
        message_id=clean_text(mail.message_id),
        subject=clean_text(mail.subject),
        score_log_id=m.group(1).decode() if m else None,
    )


def clean_text(value: str, limit: int = 512) -> str:
    """Fit a string to an indexed column: valid UTF-8 without NUL (PostgreSQL refuses both), `limit` characters."""
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")[:limit]


def apply_labels(session: Session, items: list[Incoming], how: Labelling) -> dict[str, str]:
    """Label each message; return sha256 → "added", "relabelled" or "unchanged"."""
    shas = {item.sha256 for item in items}
    stored = {m.sha256: m for m in session.scalars(select(LabelledMessage).where(LabelledMessage.sha256.in_(shas)))}
    outcome: dict[str, str] = {}
    for item in items:
        if item.sha256 in outcome:
            continue
        existing = stored.get(item.sha256)
        if existing is None:
            session.add(_new_row(item, how))
            outcome[item.sha256] = "added"
        elif existing.label == how.label:
            outcome[item.sha256] = "unchanged"
        else:
            existing.label, existing.labelled_by, existing.source = how.label, how.user, how.source
            existing.updated_at = how.when
            outcome[item.sha256] = "relabelled"
    return outcome


def _new_row(item: Incoming, how: Labelling) -> LabelledMessage:
    return LabelledMessage(
        sha256=item.sha256, raw=zlib.compress(item.raw, 6), size=len(item.raw), label=how.label,
        labelled_by=clean_text(how.user, 128), source=how.source, message_id=item.message_id,
        subject=item.subject, score_log_id=item.score_log_id, created_at=how.when, updated_at=how.when,
    )


def forget(session: Session, shas: Iterable[str]) -> set[str]:
    """Remove the labels of these messages; return the keys that had one."""
    wanted = set(shas)
    found = set(session.scalars(select(LabelledMessage.sha256).where(LabelledMessage.sha256.in_(wanted))))
    if found:
        session.execute(delete(LabelledMessage).where(LabelledMessage.sha256.in_(found)))
    return found


def counts(session: Session) -> list[tuple[str, str, str, int]]:
    """(label, user, source, count) for every combination in the store."""
    m = LabelledMessage
    stmt = (select(m.label, m.labelled_by, m.source, func.count()).group_by(m.label, m.labelled_by, m.source)
            .order_by(m.label, m.labelled_by, m.source))
    return [(label, user, source, n) for label, user, source, n in session.execute(stmt)]


def count_since(session: Session, since: datetime | None) -> int:
    """Labels added or changed since `since` (all of them when None): the retrain job's trigger."""
    stmt = select(func.count()).select_from(LabelledMessage)
    if since is not None:
        stmt = stmt.where(LabelledMessage.updated_at > since)
    return session.scalar(stmt) or 0


def iter_labelled(session: Session, batch: int = 500) -> Iterator[tuple[str, str, bytes]]:
    """(sha256, label, raw bytes) of every labelled message, in key order, a batch at a time."""
    last = ""
    while True:
        stmt = (select(LabelledMessage.sha256, LabelledMessage.label, LabelledMessage.raw)
                .where(LabelledMessage.sha256 > last).order_by(LabelledMessage.sha256).limit(batch))
        rows = session.execute(stmt).all()
        for sha, label, raw in rows:
            yield sha, label, zlib.decompress(raw)
        if len(rows) < batch:
            return
        last = rows[-1][0]
