"""The score-log spool: rows that could not reach the database, as JSON lines in a local file.

Several daemon processes share one spool file; every access holds an exclusive `flock`,
so appends never interleave and a replay sees whole lines. A replay truncates the file only
after every row in it was written, and inserts skip ids already stored, so a crash half-way
through a replay repeats rows harmlessly instead of losing them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from spamd.scorelog import ScoreLogRow

log = logging.getLogger("spamd.db")


def encode(row: ScoreLogRow) -> str:
    data = asdict(row)
    data["time"] = row.time.isoformat()
    data["recipients"] = list(row.recipients)
    return json.dumps(data, separators=(",", ":"))


def decode(line: str) -> ScoreLogRow:
    data: dict[str, Any] = json.loads(line)
    data["time"] = datetime.fromisoformat(data["time"])
    data["recipients"] = tuple(data["recipients"])
    return ScoreLogRow(**data)


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, rows: Sequence[ScoreLogRow]) -> None:
        """Append rows in one write under the lock; raises OSError when the disk refuses."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(encode(r) + "\n" for r in rows)
        with open(self.path, "a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(text)
            fh.flush()

    def has_rows(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    def replay(self, write: Callable[[list[ScoreLogRow]], None], batch_size: int) -> int:
        """Hand the spooled rows to `write` in batches, then empty the spool; return the count.

        If `write` raises, the spool is left as it was and the exception propagates.
        """
        # A byte that is not UTF-8 (the disk's damage: spamd writes JSON) spoils its line only.
        with open(self.path, "r+", encoding="utf-8", errors="replace") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            done = 0
            batch: list[ScoreLogRow] = []
            for n, line in enumerate(fh, 1):
                row = _decode_or_none(line, n, self.path)
                batch += [row] if row is not None else []
                if len(batch) >= batch_size:
                    write(batch)
                    done, batch = done + len(batch), []
            if batch:
                write(batch)
                done += len(batch)
            fh.truncate(0)
            os.fsync(fh.fileno())
        return done


def _decode_or_none(line: str, n: int, path: Path) -> ScoreLogRow | None:
    # A line cut short by a crash or a full disk is skipped, not allowed to block the rest forever.
    try:
        return decode(line)
    except (ValueError, TypeError, KeyError) as exc:
        log.error("score-log spool %s line %d is damaged and skipped: %s", path, n, exc)
        return None
