"""Fixtures: real SMTP on loopback — a capturing downstream server and spamd's proxy, each in its own thread.

    client (smtplib / aiosmtplib) ──▶ spamd proxy (Daemon in a thread) ──▶ CaptureServer (aiosmtpd)

The capture server can be told to refuse recipients, answer DATA with a 4xx, answer
slowly, or be down (stopped and later started again on the same port). Given an SSLContext it
offers STARTTLS (or, `implicit`, speaks TLS from the first byte, as smtps:// does), and each
message it keeps says whether its session was encrypted; `tls_ca` makes the certificates.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme
from aiosmtpd.smtp import SMTP, Envelope, Session

from spamd.config import Config, DatabaseConfig, DeliveryConfig, ScoringConfig, SmtpConfig
from spamd.scorelog import ScoreLogRow
from spamd.smtp import dsn
from spamd.smtp.protocol import CommandLimits
from spamd.smtp.server import Daemon, load_models

T = TypeVar("T")
_RECEIVED = re.compile(rb"Received: from [^\r\n]*(?:\r?\n[ \t][^\r\n]*)*\r?\n")


class LoopThread:
    """An asyncio loop running in a daemon thread; `call` runs a coroutine on it and waits."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass(frozen=True)
class Captured:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    tls: str | None = None  # the session's TLS version ("TLSv1.3"), None when it was plain
    xforward: dict[str, str] = field(default_factory=dict)  # XFORWARD attributes as sent (xtext), for this message
    mail_options: tuple[str, ...] = ()  # MAIL FROM's parameters (SMTPUTF8, BODY=...)
    dsn_mail: tuple[str, ...] = ()  # RET=, ENVID= as received
    dsn_rcpt: dict[str, tuple[str, ...]] = field(default_factory=dict)  # recipient → its NOTIFY=, ORCPT=


@dataclass
class Behaviour:
    refuse: dict[str, str] = field(default_factory=dict)  # recipient → the reply to RCPT
    data_reply: str | None = None  # e.g. "451 4.3.0 Try later": answered instead of accepting
    data_delay: float = 0.0  # seconds before answering DATA
    xforward_reply: str = "250 2.0.0 Ok"  # the answer to XFORWARD (when the server offers it)


class _CaptureHandler:
    def __init__(self, server: CaptureServer) -> None:
        self.server = server

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.server.xforward:
            responses.insert(len(responses) - 1, f"250-XFORWARD {self.server.xforward}")
        if self.server.dsn:
            responses.insert(len(responses) - 1, "250-DSN")
        if not self.server.eightbitmime:
            responses.remove("250-8BITMIME")
        return responses

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, _WideSMTP)
        server.forwarded.clear()  # XFORWARD's attributes end with the transaction, as in Postfix
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        refusal = self.server.behaviour.refuse.get(address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        b = self.server.behaviour
        with self.server.lock:
            self.server.data_started += 1
        if b.data_delay:
            await asyncio.sleep(b.data_delay)
        if b.data_reply:
            return b.data_reply
        # After STARTTLS aiosmtpd's transport is the TLS one, so this sees both ways of encrypting.
        tls = server.transport.get_extra_info("ssl_object") if server.transport else None
        assert isinstance(server, _WideSMTP)
        item = Captured(str(envelope.mail_from), tuple(envelope.rcpt_tos), bytes(envelope.original_content or b""),
                        tls.version() if tls else None, dict(server.forwarded), tuple(envelope.mail_options),
                        tuple(server.dsn_mail), dict(server.dsn_rcpt))
        server.forwarded.clear()
        with self.server.lock:
            self.server.messages.append(item)
        return "250 2.0.0 Ok: queued"


class _WideSMTP(SMTP):
    line_length_limit = 1 << 20  # like Postfix, the downstream takes lines over 998 characters

    def __init__(self, handler: Any, owner: CaptureServer, **kwargs: Any) -> None:
        self.owner = owner
        self.forwarded: dict[str, str] = {}  # XFORWARD's attributes for the transaction to come
        self.dsn_mail: list[str] = []
        self.dsn_rcpt: dict[str, tuple[str, ...]] = {}
        super().__init__(handler, **kwargs)
        self.command_size_limits = CommandLimits()  # DSN's longer MAIL and RCPT lines, as Postfix takes them

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.dsn_mail, self.dsn_rcpt = [], {}
        if arg is not None and self.owner.dsn:  # taken as spamd takes them, so aiosmtpd lets them through
            arg, self.dsn_mail = dsn.take(arg, dsn.MAIL)
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if arg is not None and self.owner.dsn:
            arg, params = dsn.take(arg, dsn.RCPT)
            address = self._getaddr(self._strip_command_keyword("TO:", arg) or "")[0]
            self.dsn_rcpt[str(address)] = tuple(params)
        await super().smtp_RCPT(arg)

    async def smtp_XFORWARD(self, arg: str) -> None:
        reply = self.owner.behaviour.xforward_reply
        if reply.startswith("250"):
            self.forwarded.update(item.split("=", 1) for item in arg.split())
        await self.push(reply)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None:  # not STARTTLS's second call for the same connection
            with self.owner.lock:
                self.owner.connections += 1
                self.owner.live.add(transport)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        with self.owner.lock:
            self.owner.live.discard(self._original_transport or self.transport)  # type: ignore[arg-type]
        super().connection_lost(error)


class CaptureServer:
    """A downstream MTA on 127.0.0.1 that keeps what it accepts in `messages`."""

    def __init__(self, tls_context: ssl.SSLContext | None = None, implicit: bool = False, xforward: str = "",
                 smtputf8: bool = True, dsn: bool = True, eightbitmime: bool = True) -> None:
        self.tls_context, self.implicit = tls_context, implicit
        self.xforward = xforward  # the XFORWARD attributes it offers in EHLO ("": it does not)
        self.smtputf8 = smtputf8  # offers SMTPUTF8, as Postfix does by default
        self.dsn = dsn  # offers DSN, as Postfix does
        self.eightbitmime = eightbitmime  # offers 8BITMIME, as Postfix and every current MTA do
        self.behaviour = Behaviour()
        self.messages: list[Captured] = []
        self.connections = 0  # connections ever made (pooling keeps this small)
        self.data_started = 0  # messages whose DATA has arrived (answered or not yet)
        self.live: set[asyncio.BaseTransport] = set()
        self.lock = threading.Lock()
        self.port = 0
        self._lt = LoopThread("capture-smtp")
        self._server: asyncio.Server | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"{'smtps' if self.implicit else 'smtp'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        starttls = None if self.implicit else self.tls_context

        async def go() -> asyncio.Server:
            loop = asyncio.get_running_loop()
            return await loop.create_server(
                lambda: _WideSMTP(_CaptureHandler(self), self, hostname="capture", tls_context=starttls,
                                  enable_SMTPUTF8=self.smtputf8, loop=loop),
                "127.0.0.1", self.port, reuse_address=True, ssl=self.tls_context if self.implicit else None)

        self._server = self._lt.call(go())
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Be down: stop listening and drop every open connection."""
        async def go() -> None:
            assert self._server is not None
            self._server.close()
            with self.lock:
                live = list(self.live)
            for t in live:
                t.close()

        self._lt.call(go())

    def close(self) -> None:
        self.stop()
        self._lt.close()

    def wait_for(self, n: int, timeout: float = 10) -> list[Captured]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.messages)


class MemorySink:
    """A ScoreLogSink that keeps rows in a list (the SQL writer is tested in its own tests and in serve's)."""

    def __init__(self) -> None:
        self.rows: list[ScoreLogRow] = []

    def submit(self, row: ScoreLogRow) -> None:
        self.rows.append(row)


class ProxyRunner:
    """spamd's Daemon serving on 127.0.0.1 (a free port) in its own loop thread."""

    def __init__(self, cfg: Config, models: bool = True) -> None:
        self.cfg = cfg
        self.sink = MemorySink()
        self._lt = LoopThread("spamd-proxy")
        loaded = load_models(cfg) if models else None
        self.daemon: Daemon = self._lt.call(Daemon.start(cfg, self.sink, loaded))
        self.port = self.daemon.port

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return self._lt.call(coro, timeout)

    def run(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the proxy's loop (to change its state between messages)."""
        async def go() -> T:
            return fn()

        return self._lt.call(go())

    def stop(self) -> None:
        self._lt.call(self.daemon.stop(), timeout=self.cfg.smtp.drain_timeout + 10)
        self._lt.close()


def proxy_config(models_dir: Path, delivery_url: str, base_dir: Path, **scoring: Any) -> Config:
    """A Config for tests, built directly: loopback on a free port, the given models and downstream."""
    smtp = SmtpConfig(listen="127.0.0.1:0", drain_timeout=10.0, idle_timeout=30.0, workers=1)
    delivery = DeliveryConfig(url=delivery_url, timeout=10.0, pool_size=4)
    scoring_cfg = replace(ScoringConfig(models_dir=str(models_dir)), **scoring)
    database = DatabaseConfig(url=f"sqlite:///{base_dir / 'spamd.db'}")
    return Config(smtp=smtp, delivery=delivery, scoring=scoring_cfg, database=database, base_dir=base_dir)


def server_tls(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A downstream's SSLContext with a certificate from `ca` for `names` (host names or IP addresses)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def send(port: int, raw: bytes, sender: str = "alice@example.org",
         rcpts: tuple[str, ...] = ("bob@example.net",)) -> dict[str, tuple[int, bytes]]:
    """Send one message with smtplib; returns the refused recipients (raises as smtplib does)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail(sender, list(rcpts), raw)


def past_received(content: bytes) -> bytes:
    """A message as spamd passed it on, from below the Received line spamd puts on top (which it must have)."""
    m = _RECEIVED.match(content)
    assert m is not None and b" (spamd) with " in m.group(0), content[:300]
    return content[m.end():]


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """A certificate authority made for the test run; `ca.cert_pem.write_to_path` gives its PEM file."""
    return trustme.CA()


@pytest.fixture
def capture() -> Iterator[Callable[..., CaptureServer]]:
    """Factory of capturing downstream servers, all closed at the end of the test."""
    made: list[CaptureServer] = []

    def make(tls_context: ssl.SSLContext | None = None, implicit: bool = False, xforward: str = "",
             smtputf8: bool = True, dsn: bool = True, eightbitmime: bool = True) -> CaptureServer:
        made.append(CaptureServer(tls_context, implicit, xforward, smtputf8, dsn, eightbitmime))
        return made[-1]

    yield make
    for server in made:
        server.close()


@pytest.fixture
def proxy() -> Iterator[Callable[..., ProxyRunner]]:
    """Factory: `proxy(cfg)` starts spamd on that config; every proxy is stopped at the end."""
    made: list[ProxyRunner] = []

    def make(cfg: Config, models: bool = True) -> ProxyRunner:
        made.append(ProxyRunner(cfg, models))
        return made[-1]

    yield make
    for runner in made:
        if runner._lt.loop.is_running():
            runner.stop()
