"""`spamd logs`, `spamd logs purge` and `spamd stats` from the command line, on both databases."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import Result
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from spamd.cli.when import parse_duration, parse_when
from spamd.db import scorelogs
from tests.fixtures_db import log_row

Spamd = Callable[..., Result]


@pytest.fixture
def logged(engine: Engine) -> Engine:
    rows = [
        log_row(10, verdict="spam", score=0.98, action="tagged", message_id="<new-spam@x>",
                recipients=("a@example.org", "b@example.org")),
        log_row(100, verdict="spam", score=0.91, action="tagged", long_context=True, message_id="<old-spam@x>",
                client_addr="192.0.2.7", queue_id="4dQ7x2Zc1Bz", extra={"helo": "bulk.example"}),
        log_row(20, message_id="<ham@x>"),
        log_row(60 * 24 * 40, message_id="<ancient@x>"),
    ]
    with Session(engine) as s, s.begin():
        scorelogs.insert_rows(s, rows)
    return engine


def test_since_and_verdict_in_json(spamd: Spamd, logged: Engine) -> None:
    result = spamd("logs", "--since", "1h", "--verdict", "spam", "--limit", "50", "--format", "json")
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["message_id"] for o in objects] == ["<new-spam@x>"]
    assert objects[0]["recipients"] == ["a@example.org", "b@example.org"] and objects[0]["score"] == 0.98


def test_table_and_csv(spamd: Spamd, logged: Engine) -> None:
    table = spamd("logs", "--since", "2h").stdout.splitlines()
    assert table[0].startswith("time (UTC)") and table[-1].startswith("(3 rows")
    assert "spam*" in table[3] and "a@example.org +1" in table[1]
    data = list(csv.DictReader(io.StringIO(spamd("logs", "--long-context", "--format", "csv").stdout)))
    assert [(d["message_id"], d["long_context"]) for d in data] == [("<old-spam@x>", "True")]
    client = (data[0]["client_addr"], data[0]["helo"], data[0]["queue_id"])
    assert client == ("192.0.2.7", "bulk.example", "4dQ7x2Zc1Bz")
    assert "no matching score-log rows" in spamd("logs", "--rcpt", "*@nowhere.example").stdout


def test_iso_times_and_other_filters(spamd: Spamd, logged: Engine) -> None:
    until = (datetime.now(UTC) - timedelta(minutes=30)).isoformat()
    out = spamd("logs", "--since", "1d", "--until", until, "--format", "json").stdout
    assert [json.loads(line)["message_id"] for line in out.splitlines()] == ["<old-spam@x>"]
    out = spamd("logs", "--rcpt", "b@*", "--min-score", "0.95", "--format", "json").stdout
    assert [json.loads(line)["message_id"] for line in out.splitlines()] == ["<new-spam@x>"]


def test_the_table_shows_no_control_character_a_sender_wrote(spamd: Spamd, engine: Engine) -> None:
    # A Message-ID with an escape sequence in it reached the operator's terminal as it was.
    with Session(engine) as s, s.begin():
        scorelogs.insert_rows(s, [log_row(1, message_id="<\x1b[2Kx@example.org>", sender="a\x1b]0;t\x07@b.c")])
    out = spamd("logs").stdout
    assert "\x1b" not in out and "<?[2Kx@example.org>" in out and "a?]0;t?@b.c" in out


def test_a_cut_short_listing_says_so(spamd: Spamd, logged: Engine) -> None:
    # An export with the default --limit kept its first 100 rows and said nothing.
    cut = spamd("logs", "--limit", "2", "--format", "csv")
    assert len(list(csv.DictReader(io.StringIO(cut.stdout)))) == 2 and "more may match" in cut.stderr
    whole = spamd("logs", "--limit", "0", "--format", "csv")
    assert len(list(csv.DictReader(io.StringIO(whole.stdout)))) == 4 and "more may match" not in whole.stderr


@pytest.mark.parametrize("pattern", ["B@Example.ORG", "b@EXAMPLE.*", "?@example.org"])
def test_rcpt_matches_whatever_the_case_on_both_databases(pattern: str, spamd: Spamd, logged: Engine) -> None:
    # SQLAlchemy dropped the regex's case flag on SQLite: there, B@Example.ORG found nothing.
    out = spamd("logs", "--rcpt", pattern, "--format", "json").stdout
    assert [json.loads(line)["message_id"] for line in out.splitlines()] == ["<new-spam@x>"]


def test_bad_times_are_refused_clearly(spamd: Spamd) -> None:
    result = spamd("logs", "--since", "yesterday")
    assert result.exit_code == 2 and "neither a duration" in result.stderr
    assert "not a duration" in spamd("logs", "purge", "--older-than", "30").stderr


@pytest.mark.parametrize("args, says", [
    (("logs", "--since", "999999d"), "before the year 1"),
    (("logs", "--since", "1000000000d"), "longer than any time"),
    (("logs", "--since", "0001-01-01T00:00+01:00"), "out of the calendar's range"),
    (("logs", "--limit", "99999999999999999999"), "not in the range"),
    (("runs", "--limit", "99999999999999999999"), "not in the range"),
    (("logs", "purge", "--older-than", "99999999999d"), "longer than any time"),
])
def test_times_and_limits_out_of_range_are_refused_clearly(args: tuple[str, ...], says: str, spamd: Spamd) -> None:
    # Each was an OverflowError traceback.
    result = spamd(*args)
    assert result.exit_code == 2 and says in result.stderr, result.output


def test_purge_older_than_the_calendar_purges_nothing(spamd: Spamd, logged: Engine) -> None:
    result = spamd("logs", "purge", "--older-than", "999999d")
    assert result.exit_code == 0 and result.stdout.startswith("purged 0 score-log rows"), result.output


def test_purge(spamd: Spamd, logged: Engine) -> None:
    result = spamd("logs", "purge", "--older-than", "30d")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("purged 1 score-log rows older than")
    assert "(3 rows" in spamd("logs").stdout


def test_stats(spamd: Spamd, logged: Engine) -> None:
    out = spamd("stats", "--since", "7d").stdout
    assert "messages: 3" in out
    assert "verdicts: spam 2 (66.7%), ham 1 (33.3%)" in out
    assert "long-range context changed the verdict: 1 (33.3%)" in out
    assert "latency: p50 4.0 ms, p99 4.0 ms" in out
    assert "0.9-1.0         2 " in out
    assert "no score-log rows" in spamd("stats", "--since", "1m").stdout


def test_durations_and_times() -> None:
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_duration("90m") == timedelta(minutes=90) and parse_duration("7d") == timedelta(days=7)
    assert parse_when("2h", now) == now - timedelta(hours=2)
    assert parse_when("2026-04-30T10:00", now) == datetime(2026, 4, 30, 10, 0, tzinfo=UTC)
    assert parse_when("2026-04-30T12:00+02:00", now) == datetime(2026, 4, 30, 10, 0, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_duration("30")


def test_a_message_found_by_the_mta_queue_id(spamd: Spamd, logged: Engine) -> None:
    out = spamd("logs", "--queue-id", "4dQ7x2Zc1Bz", "--format", "json").stdout
    objects = [json.loads(line) for line in out.splitlines()]
    assert [o["message_id"] for o in objects] == ["<old-spam@x>"]
    assert (objects[0]["queue_id"], objects[0]["extra"]) == ("4dQ7x2Zc1Bz", {"helo": "bulk.example"})
    assert "no matching score-log rows" in spamd("logs", "--queue-id", "4dq7x2zc1bz").stdout  # ids are case-sensitive
