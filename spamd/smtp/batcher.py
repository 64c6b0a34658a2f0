"""Micro-batching: messages arriving together are scored in one forward pass, off the event loop.

The first message of a batch waits at most `wait_s` for others (none when `max_batch` are
already queued); while a batch is being scored, the next one gathers. Scoring runs in two
threads: the scoring thread parses each batch and runs the CNN, and answers every message
the CNN is sure about; the few it is unsure of go on to the RNN thread. A GRU pass over a
long message takes milliseconds, many times a CNN pass; in its own thread it delays only the
message it reads, not the batches behind it (onnxruntime and torch release the GIL while they compute).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from spamd.errors import ScoringError
from spamd.scorer import RnnPending, Scorer, Verdict
from spamd.threadnames import named_executor

log = logging.getLogger("spamd.score")
T = TypeVar("T")
U = TypeVar("U")
Waiting = tuple[Scorer, RnnPending, "asyncio.Future[Verdict]"]  # the scorer that read it, for its models


def isolate(fn: Callable[[list[T]], list[U]], items: list[T]) -> list[U | ScoringError]:
    """`fn` over a batch; if the batch fails, over each item alone, so one bad message fails only itself."""
    try:
        return list(fn(items))
    except Exception as exc:  # noqa: BLE001 - any model failure must become a verdict of "unknown"
        if len(items) == 1:
            return [ScoringError(f"{type(exc).__name__}: {exc}")]
    return [isolate(fn, [item])[0] for item in items]


class Batcher:
    def __init__(self, scorer: Scorer | None, max_batch: int = 32, wait_s: float = 0.0) -> None:
        self.scorer = scorer  # swapped by reload(); a running batch keeps the one it started with
        self.configure(max_batch, wait_s)
        self.batches = self.scored = 0  # counters, for tests and benchmarks
        self._pending: list[tuple[bytes, asyncio.Future[Verdict]]] = []
        self._waiting: list[Waiting] = []  # read by the CNN, waiting for the RNN
        self._wake, self._wake_rnn = asyncio.Event(), asyncio.Event()
        self._executor = named_executor("spamd-score", 1)
        self._rnn_executor = named_executor("spamd-rnn", 1)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(), name="spamd-batcher"),
                       loop.create_task(self._run_rnn(), name="spamd-rnn")]

    def configure(self, max_batch: int, wait_s: float) -> None:
        """The batch bounds: set at start, and again on reload."""
        self.max_batch, self.wait_s = max(1, max_batch), wait_s

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
                await self._read(self._next_batch())  # no local keeps a batch's messages while idle

    def _next_batch(self) -> list[tuple[bytes, asyncio.Future[Verdict]]]:
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        return batch

    async def _read(self, batch: list[tuple[bytes, asyncio.Future[Verdict]]]) -> None:
        live = [(raw, fut) for raw, fut in batch if not fut.done()]  # skip messages that timed out
        if not live:
            return
        scorer = self.scorer
        if scorer is None:
            results: list[Verdict | RnnPending | ScoringError] = [ScoringError("no model loaded") for _ in live]
        else:
            results = list(await self.run_blocking(isolate, scorer.read, [raw for raw, _ in live]))
        self.batches, self.scored = self.batches + 1, self.scored + len(live)
        log.debug("scored a batch of %d", len(live))
        for (_, fut), result in zip(live, results, strict=True):
            if isinstance(result, RnnPending):
                assert scorer is not None
                self._waiting.append((scorer, result, fut))
                self._wake_rnn.set()
            else:
                _settle(fut, result)

    async def _run_rnn(self) -> None:
        while True:
            await self._wake_rnn.wait()
            self._wake_rnn.clear()
            while self._waiting:
                await self._consult_oldest()

    async def _consult_oldest(self) -> None:
        """The RNN for the messages waiting on the scorer of the oldest one. After a reload each
        scorer consults its own messages. Its own call, so that nothing here holds a replaced
        scorer (and its models and CNN table) while the RNN task waits for more work."""
        scorer = self._waiting[0][0]
        mine = [w for w in self._waiting if w[0] is scorer and not w[2].done()]
        self._waiting = [w for w in self._waiting if w[0] is not scorer]
        if not mine:
            return
        results = await asyncio.get_running_loop().run_in_executor(
            self._rnn_executor, isolate, scorer.consult, [pending for _, pending, _ in mine])
        for (_, _, fut), result in zip(mine, results, strict=True):
            _settle(fut, result)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._rnn_executor.shutdown(wait=False, cancel_futures=True)


def _settle(fut: asyncio.Future[Verdict], result: Verdict | ScoringError) -> None:
    if fut.done():  # timed out meanwhile: its message went on without a verdict
        return
    if isinstance(result, ScoringError):
        fut.set_exception(result)
    else:
        fut.set_result(result)
