"""Micro-batching: messages arriving together are scored in one forward pass, off the event loop.

The first message of a batch waits at most `wait_s` for others (none when `max_batch` are
already queued); while a batch is being scored, the next one gathers. Parsing and the
forward passes run in one executor thread, because a `Scorer` is not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from spamd.errors import ScoringError
from spamd.scorer import Scorer, Verdict

log = logging.getLogger("spamd.score")
T = TypeVar("T")


def score_batch(scorer: Scorer | None, raws: list[bytes]) -> list[Verdict | ScoringError]:
    """Score a batch; if the batch fails, score each alone so one bad message fails only itself."""
    if scorer is None:
        return [ScoringError("no model loaded") for _ in raws]
    try:
        return list(scorer.score(raws))
    except Exception as exc:  # noqa: BLE001 - any model failure must become a verdict of "unknown"
        if len(raws) == 1:
            return [ScoringError(f"{type(exc).__name__}: {exc}")]
    return [score_batch(scorer, [raw])[0] for raw in raws]


class Batcher:
    def __init__(self, scorer: Scorer | None, max_batch: int = 32, wait_s: float = 0.002) -> None:
        self.scorer = scorer  # swapped by reload(); a running batch keeps the one it started with
        self.max_batch, self.wait_s = max(1, max_batch), wait_s
        self.batches = self.scored = 0  # counters, for tests and benchmarks
        self._pending: list[tuple[bytes, asyncio.Future[Verdict]]] = []
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="spamd-score")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="spamd-batcher")

    async def score(self, raw: bytes) -> Verdict:
        """The verdict for one message; raises ScoringError if it cannot be scored."""
        fut: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._pending.append((raw, fut))
        self._wake.set()
        return await fut

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` in the scoring thread (model loading on reload goes here too)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending and len(self._pending) < self.max_batch:
                await asyncio.sleep(self.wait_s)
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                await self._score(batch)

    async def _score(self, batch: list[tuple[bytes, asyncio.Future[Verdict]]]) -> None:
        live = [(raw, fut) for raw, fut in batch if not fut.done()]  # skip messages that timed out
        if not live:
            return
        results = await self.run_blocking(score_batch, self.scorer, [raw for raw, _ in live])
        self.batches, self.scored = self.batches + 1, self.scored + len(live)
        log.debug("scored a batch of %d", len(live))
        for (_, fut), result in zip(live, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, ScoringError):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._executor.shutdown(wait=False, cancel_futures=True)
