"""Score-log repository and stats: every `spamd logs` filter, idempotent inserts, odd values, purge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from spamd.db import scorelogs, stats
from spamd.db.scorelogs import LogQuery
from spamd.scorelog import ScoreLogRow
from tests.fixtures_db import log_row

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def make_rows() -> list[ScoreLogRow]:
    return [
        log_row(5, NOW, score=0.99, cnn_score=0.99, verdict="spam", action="tagged", sender="spammer@bulk.example",
                recipients=("bob@example.com", "carol@example.net"), message_id="<a@x>",
                queue_id="4dQ7x2Zc1Bz", extra={"helo": "bulk.example", "client_name": "mx.bulk.example"}),
        log_row(30, NOW, score=0.70, cnn_score=0.40, rnn_score=0.8, verdict="spam", action="rejected",
                long_context=True, recipients=("dave@example.net",), latency_ms=40.0, message_id="<b@x>",
                queue_id="4DQ7X2ZC1BZ", extra={"helo": "4dQ7x2Zc1Bz"}),
        log_row(90, NOW, score=0.02, verdict="ham", model_version="20250101T000000Z", message_id="<c@x>",
                recipients=("erin@sub.example.com",)),
        log_row(60 * 24 * 10, NOW, score=None, cnn_score=None, verdict="unknown", action="failed-open",
                error="scoring timed out", message_id="<d@x>", recipients=()),
    ]


ROWS = make_rows()


def rows() -> list[ScoreLogRow]:
    return list(ROWS)


def find(engine: Engine, **filters: object) -> list[str]:
    with Session(engine) as s:
        return [r.message_id for r in scorelogs.find(s, LogQuery(**filters))]  # type: ignore[arg-type]


@pytest.fixture
def filled(engine: Engine) -> Engine:
    with Session(engine) as s, s.begin():
        scorelogs.insert_rows(s, rows())
    return engine


def test_rows_come_back_as_they_went_in(filled: Engine) -> None:
    with Session(filled) as s:
        back = scorelogs.find(s, LogQuery(limit=None))
    assert back == sorted(rows(), key=lambda r: r.time, reverse=True)


@pytest.mark.parametrize(("filters", "expected"), [
    ({}, ["<a@x>", "<b@x>", "<c@x>", "<d@x>"]),
    ({"since": NOW - timedelta(hours=1)}, ["<a@x>", "<b@x>"]),
    ({"until": NOW - timedelta(hours=1)}, ["<c@x>", "<d@x>"]),
    ({"verdict": "spam"}, ["<a@x>", "<b@x>"]),
    ({"action": "rejected"}, ["<b@x>"]),
    ({"sender": "spammer@bulk.example"}, ["<a@x>"]),
    ({"sender": "*@BULK.example"}, ["<a@x>"]),
    ({"rcpt": "*@example.net"}, ["<a@x>", "<b@x>"]),
    ({"rcpt": "bob@*"}, ["<a@x>"]),
    ({"rcpt": "*@example.com"}, ["<a@x>"]),  # erin is at sub.example.com, not example.com
    ({"rcpt": "b*t"}, []),  # * stays inside one address: "bob@example.com,carol@example.net" does not match
    ({"rcpt": "?ave@example.net"}, ["<b@x>"]),
    ({"min_score": 0.5}, ["<a@x>", "<b@x>"]),
    ({"max_score": 0.5}, ["<c@x>"]),
    ({"long_context": True}, ["<b@x>"]),
    ({"model": "20250101T000000Z"}, ["<c@x>"]),
    ({"message_id": "<d@x>"}, ["<d@x>"]),
    ({"queue_id": "4dQ7x2Zc1Bz"}, ["<a@x>"]),  # the queue id only (not a HELO that looks like one), case and all
    ({"queue_id": "4dQ7x2Zc1B"}, []),  # exactly
    ({"limit": 1}, ["<a@x>"]),
    ({"since": NOW - timedelta(hours=1), "verdict": "spam", "limit": 50}, ["<a@x>", "<b@x>"]),
])
def test_filters(filled: Engine, filters: dict[str, object], expected: list[str]) -> None:
    assert find(filled, **{"limit": None, **filters}) == expected


def test_inserting_a_row_twice_keeps_one(filled: Engine) -> None:
    with Session(filled) as s, s.begin():
        scorelogs.insert_rows(s, rows()[:2])
    assert len(find(filled, limit=None)) == 4


def test_odd_values_are_fitted_to_the_columns(engine: Engine) -> None:
    odd = log_row(0, NOW, message_id="<\x00" + "x" * 5000 + "\udcff>", sender="\udce9vil@x", size=2**40,
                  extra={"why": 12})  # type: ignore[dict-item]
    with Session(engine) as s, s.begin():
        scorelogs.insert_rows(s, [odd])
    with Session(engine) as s:
        (back,) = scorelogs.find(s, LogQuery())
    assert len(back.message_id) == 512 and "\x00" not in back.message_id
    assert back.size == 2**31 - 1 and back.extra == {"why": "12"}


def test_purge_deletes_only_older_rows(filled: Engine) -> None:
    with Session(filled) as s, s.begin():
        assert scorelogs.purge(s, NOW - timedelta(days=1)) == 1
    assert find(filled, limit=None) == ["<a@x>", "<b@x>", "<c@x>"]


def test_stats(filled: Engine) -> None:
    with Session(filled) as s:
        all_time = stats.gather(s)
        last_hour = stats.gather(s, since=NOW - timedelta(hours=1))
    assert all_time.total == 4
    assert all_time.verdicts == {"spam": 2, "ham": 1, "unknown": 1}
    assert all_time.actions["passed"] == 1 and all_time.actions["failed-open"] == 1
    assert all_time.histogram == [1, 0, 0, 0, 0, 0, 0, 1, 0, 1]  # 0.02, 0.70, 0.99; the unscored row is out
    assert all_time.long_context == 1
    assert all_time.latency_p50_ms == 4.0 and all_time.latency_p99_ms == 4.0
    assert {m.version: (m.total, m.spam) for m in all_time.models} == {
        "20260101T000000Z": (3, 2), "20250101T000000Z": (1, 0)}
    assert last_hour.total == 2 and last_hour.latency_p99_ms == 4.0


def test_stats_of_nothing(engine: Engine) -> None:
    with Session(engine) as s:
        empty = stats.gather(s)
    assert empty.total == 0 and empty.latency_p50_ms is None and empty.histogram == [0] * 10
