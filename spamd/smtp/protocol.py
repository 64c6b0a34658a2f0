"""aiosmtpd's SMTP protocol with spamd's limits: line length, connection count, idle time, session cleanup.

aiosmtpd fixes its line limit at RFC 5321's 1001 bytes and answers longer lines with `500
Line too long` — which would bounce real mail (Postfix accepts such lines), so the limit is
set per server from [smtp] max_line_length. aiosmtpd's own size replies ("552 Error: ...") are
given spamd's enhanced status code here, at the edge.

aiosmtpd reads DATA one line at a time, a dozen Python steps per line: most of the proxy's own
time on a large message. `read_data` reads the same bytes up to each ".\r\n" instead, and
`SpamdSMTP.smtp_DATA` is aiosmtpd's with that reader; the replies and limits are aiosmtpd's.
"""

from __future__ import annotations

import asyncio
from typing import Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP, syntax

from spamd.smtp import dsn, replies


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


class CommandLimits(dict[str, int]):
    """The longest command line spamd reads, per command: RFC 5321's 512, and for MAIL and RCPT what
    the extensions spamd offers may add (RFC 1870's SIZE 26, RFC 6531's SMTPUTF8 10, RFC 3461's DSN
    100 on MAIL and 500 on RCPT). aiosmtpd keeps its limits in a dict shared by every session, which
    each EHLO adds to and each new connection empties, and it knows nothing of DSN: a RCPT with a
    long ORCPT got "500 Command line too long", a permanent failure. Fixed here, per session."""

    def __init__(self) -> None:
        super().__init__(MAIL=SMTP.command_size_limit + 26 + 10 + 100, RCPT=SMTP.command_size_limit + 500)

    def __missing__(self, command: str) -> int:
        return SMTP.command_size_limit

    def __setitem__(self, command: str, limit: int) -> None:
        return None  # aiosmtpd's additions at EHLO: counted above already


class SpamdSMTP(SMTP):
    def __init__(self, handler: Any, connections: Connections, *, line_length_limit: int, **kwargs: Any) -> None:
        # aiosmtpd reads the limit while constructing its stream reader, so set it first.
        self.line_length_limit = line_length_limit
        self.connections = connections
        self.refused = False
        self.dsn_mail: list[str] = []  # the current MAIL's RET=, ENVID=, as the client wrote them (dsn.py)
        self.dsn_rcpt: list[str] = []  # the current RCPT's NOTIFY=, ORCPT=
        self._last_active = 0.0  # loop time of the client's last bytes or spamd's last answer
        self._hooks_running = 0
        super().__init__(handler, **kwargs)
        self.command_size_limits = CommandLimits()  # aiosmtpd's is one dict for every session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None and len(self.connections.live) >= self.connections.limit:
            self.refused = True
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(f"{replies.TOO_MANY_CONNECTIONS}\r\n".encode("ascii"))
            transport.close()
            return
        self.connections.live.add(self)
        super().connection_made(transport)

    # [smtp] idle_timeout counts the time the client keeps spamd waiting, as Postfix's
    # smtpd_timeout does. aiosmtpd restarts its timer only when it reads a command line, so a
    # whole DATA section had to arrive within the timeout (a large message over a slow line was
    # cut off, again at every retry), and the timer ran on while spamd itself scored and relayed
    # (the client was dropped while its message might already be on its way). Here the client is
    # idle from its last bytes or spamd's last answer, whichever came later, and never while a
    # handler hook runs. aiosmtpd's timer stays as it is and only checks this when it fires,
    # so each read costs a clock reading, not a new timer.

    def data_received(self, data: bytes) -> None:
        self._last_active = self.loop.time()
        super().data_received(data)

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        self._hooks_running += 1
        try:
            return await super()._call_handler_hook(command, *args)
        finally:
            self._hooks_running -= 1
            self._last_active = self.loop.time()

    def _timeout_cb(self) -> None:
        if self.transport is None:  # already closed
            return
        now = self.loop.time()
        due = now + self._timeout_duration if self._hooks_running else self._last_active + self._timeout_duration
        if due > now:
            self._timeout_handle = self.loop.call_later(due - now, self._timeout_cb)
            return
        if isinstance(self.transport, asyncio.WriteTransport):
            self.transport.write(f"{replies.IDLE_TIMEOUT}\r\n".encode("ascii"))
        super()._timeout_cb()

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        self.connections.live.discard(self)
        if self.session is not None:
            self.event_handler.session_closed(self.session)
        super().connection_lost(error)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")  # aiosmtpd's HELP text
    async def smtp_MAIL(self, arg: str | None) -> None:
        if (taken := await self._take_dsn(arg, dsn.MAIL)) is not None:
            arg, self.dsn_mail = taken
            await super().smtp_MAIL(arg)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if (taken := await self._take_dsn(arg, dsn.RCPT)) is not None:
            arg, self.dsn_rcpt = taken
            await super().smtp_RCPT(arg)

    async def _take_dsn(self, arg: str | None, names: tuple[str, ...]) -> tuple[str | None, list[str]] | None:
        """MAIL's or RCPT's argument without its DSN parameters, and those as written (dsn.py);
        None, after answering 501, when they are malformed."""
        if arg is None:
            return None, []
        arg, params = dsn.take(arg, names)
        if error := dsn.check(params):
            await self.push(f"501 5.5.4 {error}")
            return None
        return arg, params

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        # RFC 3207 4.2: after TLS the session starts over, and aiosmtpd gives it a new Session;
        # what the handler kept for the old one (an open transaction, XFORWARD's attributes) goes now.
        if not arg and self.tls_context and self.session is not None:
            self.event_handler.session_closed(self.session)
        await super().smtp_STARTTLS(arg)

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg: str) -> None:
        """Postfix's XFORWARD (spamd/smtp/xforward.py): the handler decides, as for MAIL and RCPT."""
        if await self.check_helo_needed("EHLO"):
            return
        status = await self._call_handler_hook("XFORWARD", arg or "")
        await self.push("502 5.5.1 XFORWARD not implemented" if status is MISSING else status)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # The handler's transaction ends before aiosmtpd writes its reply; a drain must wait
        # for the reply too, or the 421 it sends on closing would reach the client first.
        self.connections.begin(self)
        try:
            await self._data(arg)
        finally:
            self.connections.end(self)

    async def _data(self, arg: str) -> None:
        """aiosmtpd's `smtp_DATA` (1.4), with `read_data` for its line-by-line loop."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content, refusal = await read_data(self._reader, self.data_size_limit, self.line_length_limit)
        except (asyncio.CancelledError, asyncio.IncompleteReadError):
            self._writer.close()  # the connection went away during DATA
            raise
        if refusal:
            await self.push(refusal)
            self._set_post_data_state()
            await self.event_handler.data_refused(self.session)
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and status.startswith("552 Error:"):
            status = replies.TOO_BIG  # type: ignore[assignment]
        await super().push(status)


DOT_LINE = b".\r\n"
LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"  # aiosmtpd's replies, word for word
TOO_MUCH_DATA = "552 Error: Too much mail data"


async def read_data(reader: asyncio.StreamReader, size_limit: int | None, line_limit: int) -> tuple[bytes, str]:
    """The DATA section up to its lone-dot line, as aiosmtpd reads it: (content, "") with the
    dot that begins a line taken off (RFC 5321 4.5.2), or (b"", reply) when a line was longer
    than `line_limit` bytes or the data longer than `size_limit`. Either way everything up to
    the dot line is read and nothing after it; once over a limit, nothing more is kept."""
    pieces: list[bytes] = []
    size, before, line, refusal = 0, b"\r\n", b"", ""  # `before`: the last two bytes read
    while True:
        try:
            piece = await reader.readuntil(DOT_LINE)  # the end of a line that ends in a dot
        except asyncio.LimitOverrunError as exc:  # no dot line within the reader's limit
            piece = await reader.read(exc.consumed)
        done = (before + piece[-5:]).endswith(b"\r\n" + DOT_LINE)  # only the tail: no copy of the piece
        if done:
            piece = piece[: -len(DOT_LINE)]
        before = (before + piece[-2:])[-2:]
        if not refusal:
            size += len(piece)
            line, too_long = _last_line(line + piece if line else piece, line_limit)
            refusal = LINE_TOO_LONG if too_long else TOO_MUCH_DATA if size_limit and size > size_limit else ""
            if refusal:
                pieces.clear()
            else:
                pieces.append(piece)
        if done:
            if refusal:
                return b"", refusal
            data = b"".join(pieces)
            return (data[1:] if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n"), ""


def _last_line(text: bytes, limit: int) -> tuple[bytes, bool]:
    """The unfinished line at the end of `text`, and whether a line in it is over `limit` bytes
    with its CRLF. Only a text longer than the limit is split into lines."""
    if len(text) + 2 <= limit:
        cut = text.rfind(b"\r\n")
        return (text if cut < 0 else text[cut + 2 :]), False
    lines = text.split(b"\r\n")
    last = lines.pop()
    return last, max(map(len, lines), default=0) + 2 > limit or len(last) + 2 > limit
