"""Times on the command line: durations such as `90m`, `2h`, `7d`, and points in time (a duration ago, or ISO)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import click

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration such as 90m, 2h or 7d")
    try:
        return timedelta(**{_UNITS[m.group(2).lower()]: float(m.group(1))})
    except OverflowError:
        raise ValueError(f"{text!r} is longer than any time spamd can count back to") from None


def parse_when(text: str, now: datetime) -> datetime:
    """A duration means that long before `now`; otherwise an ISO time, UTC unless it names an offset."""
    if _DURATION.match(text):
        duration = parse_duration(text)
        try:
            return now - duration
        except OverflowError:
            raise ValueError(f"{text!r} reaches back before the year 1") from None
    try:
        t = datetime.fromisoformat(text.strip())
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (90m, 2h, 7d) nor an ISO time (2024-05-01T12:00)") from None
    except OverflowError:  # an offset carried the time out of the calendar
        raise ValueError(f"{text!r} is out of the calendar's range") from None


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class When(click.ParamType):
    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_when(str(value), datetime.now(UTC))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
