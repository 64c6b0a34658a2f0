"""Where score-log rows go: the store's batched SQL writer (with its spool), opened per process."""

from __future__ import annotations

from collections.abc import Callable

from spamd.config import Config
from spamd.scorelog import ScoreLogSink


def sql_sink(cfg: Config) -> tuple[ScoreLogSink, Callable[[], None]]:
    """The SQL writer for [database] url and a function that flushes and closes it.

    Raises SchemaOutOfDate (run `spamd db upgrade`) or StoreError before any mail is taken.
    """
    from spamd.db.store import open_store
    from spamd.db.writer import ScoreLogWriter

    engine = open_store(cfg.database_url)
    writer = ScoreLogWriter.from_config(cfg, engine).start()

    def close() -> None:
        writer.close()
        engine.dispose()

    return writer, close


def check_store(cfg: Config) -> None:
    """Create the embedded store if it is missing; raise SchemaOutOfDate / StoreError if it is unusable."""
    from spamd.db.store import open_store

    open_store(cfg.database_url).dispose()
