"""smtp://host:port delivery: the client's envelope relayed live over pooled aiosmtplib connections.

At most `pool_size` connections are open to the downstream at once (like an MTA's
per-destination concurrency); a transaction takes one at MAIL, waiting up to the delivery
timeout for a free one, and hands it back at its end, still open for the next message.
aiosmtplib's exceptions stop here: a connection that fails, times out or drops becomes
`451 4.4.1` (the client retries, nothing is lost); a reply the downstream gives is relayed
as given. A pooled connection the downstream has closed meanwhile is replaced once, at MAIL.

TLS ([delivery] tls, see tls.py) is settled once per connection, when it is opened: STARTTLS
after the first EHLO, then EHLO again (RFC 3207: what was said before TLS no longer counts).
A connection that falls short of the policy is closed, and the transaction is answered
`451 4.7.4` (no STARTTLS offered) or `451 4.7.5` (handshake or certificate check failed), with
the reason in the log: the client retries, nothing is lost.

A downstream without SMTPUTF8 is treated as Postfix's SMTP client treats one (RFC 6531): a UTF-8
sender is refused at MAIL, a UTF-8 recipient at RCPT, and a message sent with SMTPUTF8 whose
headers hold UTF-8 at DATA's end (replies.py); nothing is downgraded.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping

from aiosmtplib import SMTP, SMTPConnectError, SMTPException, SMTPResponseException, SMTPServerDisconnected

from spamd.errors import DeliveryTempFail
from spamd.mail.headers import split_header_block
from spamd.smtp import dsn, replies, xforward
from spamd.smtp.forward import Reply, Transaction
from spamd.smtp.tls import DownstreamTls

log = logging.getLogger("spamd.smtp")
UNAVAILABLE = Reply.parse(replies.DOWNSTREAM_UNAVAILABLE)
NO_TLS = Reply.parse(replies.DOWNSTREAM_NO_TLS)
TLS_FAILED = Reply.parse(replies.DOWNSTREAM_TLS_FAILED)
NO_SMTPUTF8 = Reply.parse(replies.DOWNSTREAM_NO_SMTPUTF8)
NO_SMTPUTF8_HEADERS = Reply.parse(replies.DOWNSTREAM_NO_SMTPUTF8_HEADERS)
# Raised by a connection that fails in any way; each is answered 451, never 250.
FAILURES = (SMTPException, OSError, TimeoutError)


def _dsn(client: SMTP, options: list[str], names: tuple[str, ...]) -> list[bytes]:
    """The DSN parameters among `options`, for a downstream that offers DSN (else none: see dsn.py)."""
    if not client.supports_extension("dsn"):
        return []
    return [o.encode("utf-8", "surrogateescape") for o in options if o.partition("=")[0].upper() in names]


def _addr(address: str) -> bytes:
    return address.encode("utf-8", "surrogateescape")


class SmtpTransaction:
    def __init__(self, pool: SmtpDownstream, client: SMTP, smtputf8: bool) -> None:
        self.pool = pool
        self.client: SMTP | None = client
        self.smtputf8 = smtputf8  # the client's MAIL asked for SMTPUTF8

    async def add_recipient(self, address: str, options: list[str]) -> Reply:
        if self.client is None:
            return UNAVAILABLE
        if not address.isascii() and not self.client.supports_extension("smtputf8"):
            return NO_SMTPUTF8  # as for a UTF-8 sender at MAIL: refused here, never downgraded
        try:
            resp = await self.client.execute_command(b"RCPT", b"TO:<" + _addr(address) + b">",
                                                     *_dsn(self.client, options, dsn.RCPT))
        except FAILURES as exc:
            log.error("downstream failed during RCPT: %s", exc)
            self._end(reuse=False)
            return UNAVAILABLE
        except asyncio.CancelledError:
            self._end(reuse=False)  # the client went away mid-command: the connection is out of step
            raise
        return Reply(resp.code, resp.message)

    async def send(self, message: bytes) -> Reply:
        if self.client is None:
            return UNAVAILABLE
        if self.smtputf8 and not self.client.supports_extension("smtputf8") \
                and not split_header_block(message)[0].isascii():
            await self.abort()
            return NO_SMTPUTF8_HEADERS
        try:
            resp = await self.client.data(message)
        except SMTPResponseException as exc:
            if 400 <= exc.code < 600:
                await self.abort()  # RSET: a refused DATA may leave the downstream's transaction open
                return Reply(exc.code, exc.message)
            log.error("downstream failed during DATA: %s", exc)  # no reply code (aiosmtplib's -1): out of step
            self._end(reuse=False)
            return UNAVAILABLE
        except FAILURES as exc:
            log.error("downstream failed during DATA: %s", exc)
            self._end(reuse=False)
            return UNAVAILABLE
        except asyncio.CancelledError:
            self._end(reuse=False)
            raise
        self._end(reuse=True)
        return Reply(resp.code, resp.message)

    async def abort(self) -> None:
        if self.client is None:
            return
        try:
            await self.client.rset()
        except FAILURES:
            self._end(reuse=False)
            return
        except asyncio.CancelledError:
            self._end(reuse=False)
            raise
        self._end(reuse=True)

    def discard(self) -> None:
        """Drop the connection without a word (the client vanished mid-transaction)."""
        self._end(reuse=False)

    def _end(self, reuse: bool) -> None:
        client, self.client = self.client, None
        if client is not None:
            self.pool.checkin(client, reuse)


class SmtpDownstream:
    def __init__(self, host: str, port: int, local_hostname: str, timeout: float, pool_size: int,
                 tls: DownstreamTls) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.local_hostname, self.timeout = local_hostname, timeout
        self.connections = 0  # made so far (pooling keeps this small)
        self._idle: list[SMTP] = []
        self._slots = asyncio.Semaphore(max(1, pool_size))

    async def begin(self, sender: str, options: list[str], forwarded: Mapping[str, str]) -> Transaction | Reply:
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout)
        except TimeoutError:
            log.error("no free connection to the downstream within %.0fs", self.timeout)
            return UNAVAILABLE
        return await self._mail(sender, options, forwarded)

    async def _mail(self, sender: str, options: list[str], forwarded: Mapping[str, str]) -> Transaction | Reply:
        """MAIL FROM on a pooled connection, or on a new one if the pooled one was closed meanwhile.

        Holds a slot; every way out but a transaction frees it (a transaction frees it at its end).
        """
        for pooled in (True, False):
            client = self._pop_idle() if pooled else None
            try:
                client = client or await self._connect()
                if not sender.isascii() and not client.supports_extension("smtputf8"):
                    self.checkin(client, reuse=True)  # RFC 6531 3.6.2: never downgraded, refused
                    return NO_SMTPUTF8
                await self._xforward(client, forwarded)
                resp = await client.execute_command(b"MAIL", b"FROM:<" + _addr(sender) + b">",
                                                    *self._options(client, options))
            except SMTPServerDisconnected:
                if pooled:
                    continue  # nothing was sent yet: safe to try again on a fresh connection
                return self._unavailable("it dropped a new connection")
            except DeliveryTempFail as exc:
                return self._unavailable(str(exc), Reply(exc.code, exc.text))
            except FAILURES as exc:
                if client is not None:
                    client.close()  # out of step with the downstream: never pooled again
                return self._unavailable(str(exc))
            except asyncio.CancelledError:
                if client is not None:
                    client.close()
                self._slots.release()
                raise
            txn = SmtpTransaction(self, client, any(o.upper() == "SMTPUTF8" for o in options))
            if resp.code != 250:
                await txn.abort()
                return Reply(resp.code, resp.message)
            return txn
        return UNAVAILABLE

    def _unavailable(self, why: str, reply: Reply = UNAVAILABLE) -> Reply:
        log.error("downstream %s:%s unavailable: %s", self.host, self.port, why)
        self._slots.release()
        return reply

    def _pop_idle(self) -> SMTP | None:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
            client.close()
        return None

    async def _connect(self) -> SMTP:
        """A new connection, greeted and (as [delivery] tls asks) encrypted; DeliveryTempFail if TLS fell short."""
        client = SMTP(hostname=self.host, port=self.port, local_hostname=self.local_hostname,
                      timeout=self.timeout, start_tls=False, use_tls=self.tls.implicit, tls_context=self.tls.context)
        try:
            await client.connect()
        except SMTPConnectError as exc:
            if isinstance(exc.__cause__, ssl.SSLError):  # smtps://: aiosmtplib wraps a failed handshake
                raise self._tls_failed(TLS_FAILED, f"TLS handshake failed: {exc.__cause__}") from exc
            raise
        try:
            await client.ehlo()
            if self.tls.starttls:
                await self._starttls(client)
        except BaseException:
            client.close()
            raise
        self.connections += 1
        return client

    async def _starttls(self, client: SMTP) -> None:
        if not client.supports_extension("starttls"):
            if self.tls.level == "may":
                return
            raise self._tls_failed(NO_TLS, "it offers no STARTTLS")
        try:
            await client.starttls()
        except (ssl.SSLError, SMTPResponseException) as exc:  # a failed check is an SSLCertVerificationError
            raise self._tls_failed(TLS_FAILED, f"STARTTLS failed: {exc}") from exc
        await client.ehlo()

    def _tls_failed(self, reply: Reply, why: str) -> DeliveryTempFail:
        return DeliveryTempFail(f'{why} ([delivery] tls = "{self.tls.level}")', reply.code, reply.text)

    async def _xforward(self, client: SMTP, forwarded: Mapping[str, str]) -> None:
        """Pass the client's XFORWARD attributes on, where the downstream offers XFORWARD (it
        resets them after the transaction, so a pooled connection carries nothing over). They
        only inform its logs: a refusal is logged, and the message goes on without them."""
        offered = client.esmtp_extensions.get("xforward")
        if not forwarded or offered is None:
            return
        for args in xforward.commands(forwarded, offered):
            resp = await client.execute_command(b"XFORWARD", *args)
            if resp.code != 250:
                log.warning("downstream %s:%s refused XFORWARD: %s %s", self.host, self.port, resp.code, resp.message)
                return

    @staticmethod
    def _options(client: SMTP, options: list[str]) -> list[bytes]:
        # BODY= and SMTPUTF8 are passed on where the downstream speaks 8BITMIME and SMTPUTF8;
        # SIZE= is not: it would understate the message once spamd's headers are added.
        keep = [o for o in options if o.upper().startswith("BODY=") and client.supports_extension("8bitmime")
                or o.upper() == "SMTPUTF8" and client.supports_extension("smtputf8")]
        return [o.encode("ascii") for o in keep] + _dsn(client, options, dsn.MAIL)

    def checkin(self, client: SMTP, reuse: bool) -> None:
        """A transaction's end: its connection goes back to the pool (or is closed), its slot is free."""
        if reuse and client.is_connected:
            self._idle.append(client)
        else:
            client.close()
        self._slots.release()

    async def close(self) -> None:
        """QUIT every idle connection, then drop it.

        Once QUIT is answered nothing is left to say, so a TLS connection is not left waiting for
        the downstream's close_notify, which would outlive the event loop when the daemon exits.
        """
        idle, self._idle = self._idle, []
        for client in idle:
            transport = client.transport
            try:
                await client.quit(timeout=2)
            except FAILURES:
                client.close()
            if isinstance(transport, asyncio.Transport):
                transport.abort()
        await asyncio.sleep(0)  # the aborted sockets are closed on the loop's next turn
