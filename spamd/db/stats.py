"""Aggregates over score logs for `spamd stats`: counts, score histogram, latency percentiles, per model."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, case, func, select
from sqlalchemy.orm import Session

from spamd.db.schema import ScoreLog

BUCKETS = 10  # score histogram: [0, 0.1), [0.1, 0.2) ... [0.9, 1.0]


@dataclass(frozen=True)
class ModelStats:
    version: str | None
    total: int
    spam: int
    long_context: int
    mean_latency_ms: float


@dataclass(frozen=True)
class LogStats:
    total: int
    verdicts: dict[str, int] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)
    histogram: list[int] = field(default_factory=list)  # BUCKETS counts of scored messages
    long_context: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    models: list[ModelStats] = field(default_factory=list)


def gather(session: Session, since: datetime | None = None, until: datetime | None = None) -> LogStats:
    where = _window(since, until)
    total = session.scalar(select(func.count()).select_from(ScoreLog).where(*where)) or 0
    return LogStats(
        total=total,
        verdicts=_counts(session, ScoreLog.verdict, where),
        actions=_counts(session, ScoreLog.action, where),
        histogram=_histogram(session, where),
        long_context=session.scalar(select(func.count()).where(*where, ScoreLog.long_context.is_(True))) or 0,
        latency_p50_ms=_percentile(session, where, total, 0.50),
        latency_p99_ms=_percentile(session, where, total, 0.99),
        models=_per_model(session, where),
    )


def _window(since: datetime | None, until: datetime | None) -> list[ColumnElement[bool]]:
    return ([ScoreLog.time >= since] if since else []) + ([ScoreLog.time < until] if until else [])


def _counts(session: Session, column: SQLColumnExpression[str], where: list[ColumnElement[bool]]) -> dict[str, int]:
    key = _unindexed(column)
    stmt = select(key, func.count()).where(*where).group_by(key).order_by(func.count().desc())
    return {key: n for key, n in session.execute(stmt)}


def _unindexed(column: SQLColumnExpression[Any]) -> ColumnElement[str]:
    # Grouping by a bare column lets SQLite's planner walk that column's index (all of it, in
    # order) instead of the time index that narrows the window: 150 ms instead of 2 at 1M rows.
    return func.coalesce(column, "")


def _histogram(session: Session, where: list[ColumnElement[bool]]) -> list[int]:
    # One pass with a conditional sum per bucket: portable, unlike floor() or integer casts.
    score = ScoreLog.score
    edges = [i / BUCKETS for i in range(BUCKETS)] + [float("inf")]
    bounds = zip(edges, edges[1:], strict=False)
    sums = [func.sum(case(((score >= lo) & (score < hi), 1), else_=0)) for lo, hi in bounds]
    row = session.execute(select(*sums).where(*where, score.is_not(None))).one()
    return [int(n or 0) for n in row]


def _percentile(session: Session, where: list[ColumnElement[bool]], total: int, q: float) -> float | None:
    if total == 0:
        return None
    stmt = select(ScoreLog.latency_ms).where(*where).order_by(ScoreLog.latency_ms).offset(int(q * (total - 1)))
    return session.scalar(stmt.limit(1))


def _per_model(session: Session, where: list[ColumnElement[bool]]) -> list[ModelStats]:
    c = ScoreLog
    spam = func.sum(case((c.verdict == "spam", 1), else_=0))
    longc = func.sum(case((c.long_context.is_(True), 1), else_=0))
    version = _unindexed(c.model_version)
    stmt = (select(version, func.count(), spam, longc, func.avg(c.latency_ms)).where(*where)
            .group_by(version).order_by(func.count().desc()))
    rows = session.execute(stmt)
    return [ModelStats(v or None, n, int(s or 0), int(lc or 0), float(lat or 0.0)) for v, n, s, lc, lat in rows]
