"""Repository of score-log rows: insert (idempotently), query with `spamd logs`' filters, purge."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, and_, delete, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from spamd.db.labels import clean_text
from spamd.db.schema import ScoreLog
from spamd.scorelog import ScoreLogRow

_GLOB = re.compile(r"[*?]")
MAX_INT = 2**31 - 1  # an INTEGER column on PostgreSQL


def row_values(row: ScoreLogRow) -> dict[str, Any]:
    """A row as column values, fitted to the columns so that no odd message can fail an insert."""
    return {
        "id": row.id, "time": row.time, "message_id": clean_text(row.message_id),
        "sender": clean_text(row.sender), "recipients": clean_text(",".join(row.recipients), 1 << 20),
        "client_addr": clean_text(row.client_addr, 64), "queue_id": clean_text(row.queue_id, 64),
        "size": min(max(row.size, 0), MAX_INT),
        "cnn_score": row.cnn_score, "rnn_score": row.rnn_score, "score": row.score,
        "verdict": clean_text(row.verdict, 16), "action": clean_text(row.action, 32), "long_context": row.long_context,
        "model_version": None if row.model_version is None else clean_text(row.model_version, 128),
        "latency_ms": row.latency_ms, "error": clean_text(row.error, 1 << 16),
        "extra": {clean_text(k): clean_text(str(v), 4096) for k, v in row.extra.items()},
    }


def insert_rows(session: Session, rows: Sequence[ScoreLogRow]) -> None:
    """Insert rows; a row whose id is already stored is skipped, so replaying a spool is safe."""
    if not rows:
        return
    # The Table, not the ORM class: a plain executemany, without the ORM's per-row bookkeeping.
    table, dialect = cast(Table, ScoreLog.__table__), session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table).on_conflict_do_nothing(index_elements=["id"])
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=["id"])
    else:
        stmt = table.insert()
    session.execute(stmt, [row_values(r) for r in rows])


def to_row(log: ScoreLog) -> ScoreLogRow:
    return ScoreLogRow(
        id=log.id, time=log.time, message_id=log.message_id, sender=log.sender,
        recipients=tuple(r for r in log.recipients.split(",") if r), client_addr=log.client_addr,
        size=log.size, cnn_score=log.cnn_score, rnn_score=log.rnn_score, score=log.score,
        verdict=log.verdict, action=log.action, long_context=log.long_context,
        model_version=log.model_version, latency_ms=log.latency_ms, error=log.error, queue_id=log.queue_id,
        extra=dict(log.extra or {}),
    )


@dataclass(frozen=True)
class LogQuery:
    """The filters of `spamd logs`; None means "any"."""

    since: datetime | None = None
    until: datetime | None = None
    verdict: str | None = None
    action: str | None = None
    sender: str | None = None  # exact, or a glob with * and ?
    rcpt: str | None = None  # a glob matched against each recipient
    min_score: float | None = None
    max_score: float | None = None
    long_context: bool = False
    model: str | None = None
    message_id: str | None = None
    queue_id: str | None = None  # the MTA's queue id, as XFORWARD named it
    limit: int | None = 100


def find(session: Session, q: LogQuery) -> list[ScoreLogRow]:
    """Matching rows, newest first."""
    stmt = select(ScoreLog).where(*conditions(q)).order_by(ScoreLog.time.desc())
    if q.limit:
        stmt = stmt.limit(q.limit)
    return [to_row(log) for log in session.scalars(stmt)]


def conditions(q: LogQuery) -> list[ColumnElement[bool]]:
    c = ScoreLog
    out: list[ColumnElement[bool]] = []
    equal = [(c.verdict, q.verdict), (c.action, q.action), (c.model_version, q.model), (c.message_id, q.message_id),
             (c.queue_id, q.queue_id)]
    out += [col == value for col, value in equal if value is not None]
    out += [c.time >= q.since] if q.since else []
    out += [c.time < q.until] if q.until else []
    out += [c.score >= q.min_score] if q.min_score is not None else []
    out += [c.score <= q.max_score] if q.max_score is not None else []
    out += [c.long_context.is_(True)] if q.long_context else []
    if q.sender is not None and _GLOB.search(q.sender):
        out.append(c.sender.ilike(glob_to_like(q.sender), escape="\\"))
    elif q.sender is not None:
        out.append(c.sender == q.sender)
    if q.rcpt is not None:
        out.append(rcpt_matches(q.rcpt))
    return out


def rcpt_matches(glob: str) -> ColumnElement[bool]:
    """Some recipient matches `glob`. LIKE narrows cheaply; the regex keeps `*` inside one address."""
    padded = literal(",") + ScoreLog.recipients + literal(",")
    # Case-insensitive by the leading (?i), which both databases read: SQLAlchemy drops `flags` on
    # SQLite, where `--rcpt bob@example.com` missed Bob@Example.COM that PostgreSQL found.
    regex = "(?i)," + "".join("[^,]*" if ch == "*" else "[^,]" if ch == "?" else re.escape(ch) for ch in glob) + ","
    return and_(padded.ilike("%," + glob_to_like(glob) + ",%", escape="\\"), padded.regexp_match(regex))


def glob_to_like(glob: str) -> str:
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def purge(session: Session, before: datetime) -> int:
    """Delete rows older than `before`; return how many (the retention job calls this too)."""
    result = session.execute(delete(ScoreLog).where(ScoreLog.time < before))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
