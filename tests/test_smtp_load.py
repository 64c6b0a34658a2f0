"""Many clients at once: every message delivered exactly once, with headers, and logged; batches form."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiosmtplib
import pytest

from tests.fixtures_models import TrainedTiny
from tests.fixtures_smtp import past_received, proxy_config

CONNECTIONS, PER_CONNECTION = 50, 20


def _message(conn: int, i: int) -> bytes:
    return (f"Subject: load {conn}/{i}\r\nFrom: c{conn}@example.org\r\nMessage-ID: <{conn}.{i}@load>\r\n\r\n"
            f"message {i} of connection {conn}, click here now for a free offer\r\n").encode()


async def _client(port: int, conn: int) -> None:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60, start_tls=False)
    await client.connect()
    for i in range(PER_CONNECTION):
        errors, _ = await client.sendmail(f"c{conn}@example.org", [f"r{conn}@example.net"], _message(conn, i))
        assert errors == {}
    await client.quit()


async def _all(port: int) -> None:
    await asyncio.gather(*(_client(port, c) for c in range(CONNECTIONS)))


@pytest.mark.parametrize("wait_ms", [0.0, 2.0])  # the default (batches are what queued during the last), and a wait
def test_50_connections_x_20_messages_each_delivered_exactly_once(tiny_trained: TrainedTiny, tmp_path: Path,
                                                                   capture, proxy, wait_ms: float):
    down = capture()
    cfg = proxy_config(tiny_trained.models_dir, down.url, tmp_path, batch_wait_ms=wait_ms)
    p = proxy(cfg)
    asyncio.run(_all(p.port))
    total = CONNECTIONS * PER_CONNECTION
    got = down.wait_for(total)
    ids = [re.search(rb"Message-ID: <([\d.]+)@load>", m.content).group(1) for m in got]
    assert len(ids) == total and len(set(ids)) == total
    spam_ids = [re.search(rb"^X-Spam-Id: (\w+)\r$", m.content, re.M).group(1).decode() for m in got]
    assert all(past_received(m.content).startswith(b"X-Spam-Flag: ") for m in got)
    assert sorted(spam_ids) == sorted(r.id for r in p.sink.rows)
    assert {r.message_id for r in p.sink.rows} == {f"<{i.decode()}@load>" for i in ids}
    batcher = p.daemon.batcher
    assert batcher.scored == total and batcher.batches < total  # concurrent messages shared forward passes
    assert down.connections <= cfg.delivery.pool_size  # reused, never more than the pool allows at once
