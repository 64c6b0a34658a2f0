"""The score-log row as a value object, and the seam the daemon writes it through.

The row's id is made here, before the row reaches SQL, because the proxy writes it into
the message's `X-Spam-Id` header before the (batched, asynchronous) insert happens.
Ids are time-ordered: 12 hex digits of milliseconds since the epoch, then 8 random ones.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol


def new_log_id(now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{ms:012x}{secrets.token_hex(4)}"


@dataclass(frozen=True)
class ScoreLogRow:
    id: str
    time: datetime
    message_id: str
    sender: str
    recipients: tuple[str, ...]
    client_addr: str
    size: int
    cnn_score: float | None  # None when scoring failed
    rnn_score: float | None
    score: float | None
    verdict: str  # "spam", "ham" or "unknown"
    action: str  # "tagged", "passed", "rejected", "tempfailed", "failed-open" ...
    long_context: bool
    model_version: str | None
    latency_ms: float
    error: str = ""
    queue_id: str = ""  # the MTA's queue id for the message, where it sent XFORWARD IDENT
    # More about the client, where known: "helo", "client_name" (spamd.smtp.xforward.logged_client).
    extra: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)


class ScoreLogSink(Protocol):
    """Where the daemon hands score-log rows. `submit` must never block or raise."""

    def submit(self, row: ScoreLogRow) -> None: ...
