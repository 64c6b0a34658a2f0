"""aiosmtpd's SMTP protocol with spamd's limits: line length, connection count, session cleanup.

aiosmtpd fixes its line limit at RFC 5321's 1001 bytes and answers longer lines with `500
Line too long` — which would bounce real mail (Postfix accepts such lines), so the limit is
set per server from [smtp] max_line_length. aiosmtpd's own size replies ("552 Error: ...") are
given spamd's enhanced status code here, at the edge.
"""

from __future__ import annotations

import asyncio
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP

from spamd.smtp import replies


class Connections:
    """The live connections of one server, counted against [smtp] max_connections."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.live: set[SpamdSMTP] = set()
        self.answering: set[SpamdSMTP] = set()  # inside DATA, until its reply is written
        self._quiet = asyncio.Event()
        self._quiet.set()

    def begin(self, proto: SpamdSMTP) -> None:
        self.answering.add(proto)
        self._quiet.clear()

    def end(self, proto: SpamdSMTP) -> None:
        self.answering.discard(proto)
        if not self.answering:
            self._quiet.set()

    async def all_closed(self) -> None:
        """Wait until every client has gone."""
        while self.live:
            await asyncio.sleep(0.02)

    async def quiet(self) -> None:
        """Wait until no DATA is between its first byte and its reply being written."""
        await self._quiet.wait()

    def close_all(self, reply: str) -> None:
        for proto in list(self.live):
            transport = proto.transport
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(f"{reply}\r\n".encode("ascii"))
                transport.close()


class SpamdSMTP(SMTP):
    def __init__(self, handler: Any, connections: Connections, *, line_length_limit: int, **kwargs: Any) -> None:
        # aiosmtpd reads the limit while constructing its stream reader, so set it first.
        self.line_length_limit = line_length_limit
        self.connections = connections
        self.refused = False
        super().__init__(handler, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None and len(self.connections.live) >= self.connections.limit:
            self.refused = True
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(f"{replies.TOO_MANY_CONNECTIONS}\r\n".encode("ascii"))
            transport.close()
            return
        self.connections.live.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        self.connections.live.discard(self)
        if self.session is not None:
            self.event_handler.session_closed(self.session)
        super().connection_lost(error)

    async def smtp_DATA(self, arg: str) -> None:
        # The handler's transaction ends before aiosmtpd writes its reply; a drain must wait
        # for the reply too, or the 421 it sends on closing would reach the client first.
        self.connections.begin(self)
        try:
            await super().smtp_DATA(arg)
        finally:
            self.connections.end(self)

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and status.startswith("552 Error:"):
            status = replies.TOO_BIG  # type: ignore[assignment]
        await super().push(status)
