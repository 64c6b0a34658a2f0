"""smtp://host:port delivery: the client's envelope relayed live over pooled aiosmtplib connections.

aiosmtplib's exceptions stop here: a connection that fails, times out or drops becomes
`451 4.4.1` (the client retries, nothing is lost); a reply the downstream gives is relayed
as given. A pooled connection the downstream has closed meanwhile is replaced once, at MAIL.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtplib import SMTP, SMTPException, SMTPResponseException, SMTPServerDisconnected

from spamd.smtp import replies
from spamd.smtp.forward import Reply, Transaction

log = logging.getLogger("spamd.smtp")
UNAVAILABLE = Reply.parse(replies.DOWNSTREAM_UNAVAILABLE)
# Raised by a connection that fails in any way; each is answered 451, never 250.
FAILURES = (SMTPException, OSError, TimeoutError)


def _addr(address: str) -> bytes:
    return address.encode("utf-8", "surrogateescape")


class SmtpTransaction:
    def __init__(self, pool: SmtpDownstream, client: SMTP) -> None:
        self.pool = pool
        self.client: SMTP | None = client

    async def add_recipient(self, address: str, options: list[str]) -> Reply:
        if self.client is None:
            return UNAVAILABLE
        try:
            resp = await self.client.execute_command(b"RCPT", b"TO:<" + _addr(address) + b">")
        except FAILURES as exc:
            return self._fail("RCPT", exc)
        except asyncio.CancelledError:
            self.discard()  # the client went away mid-command: the connection is out of step
            raise
        return Reply(resp.code, resp.message)

    async def send(self, message: bytes) -> Reply:
        client, self.client = self.client, None
        if client is None:
            return UNAVAILABLE
        try:
            resp = await client.data(message)
        except SMTPResponseException as exc:
            self.client = client
            await self.abort()  # RSET: a refused DATA may leave the downstream's transaction open
            return Reply(exc.code, exc.message)
        except FAILURES as exc:
            client.close()
            log.error("downstream failed during DATA: %s", exc)
            return UNAVAILABLE
        except asyncio.CancelledError:
            client.close()
            raise
        self.pool.release(client)
        return Reply(resp.code, resp.message)

    async def abort(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            await client.rset()
        except FAILURES:
            client.close()
            return
        except asyncio.CancelledError:
            client.close()
            raise
        self.pool.release(client)

    def discard(self) -> None:
        """Drop the connection without a word (the client vanished mid-transaction)."""
        client, self.client = self.client, None
        if client is not None:
            client.close()

    def _fail(self, step: str, exc: BaseException) -> Reply:
        log.error("downstream failed during %s: %s", step, exc)
        self.discard()
        return UNAVAILABLE


class SmtpDownstream:
    """Connections to one downstream MTA; up to `pool_size` idle ones are kept for reuse."""

    def __init__(self, host: str, port: int, local_hostname: str, timeout: float, pool_size: int) -> None:
        self.host, self.port = host, port
        self.local_hostname, self.timeout, self.pool_size = local_hostname, timeout, pool_size
        self._idle: list[SMTP] = []

    async def begin(self, sender: str, options: list[str]) -> Transaction | Reply:
        for pooled in (True, False):
            client = self._pop_idle() if pooled else None
            try:
                client = client or await self._connect()
                resp = await client.execute_command(b"MAIL", b"FROM:<" + _addr(sender) + b">",
                                                    *self._options(client, options))
            except SMTPServerDisconnected:
                if pooled:
                    continue  # the downstream closed an idle connection: nothing was sent yet
                log.error("downstream %s:%s dropped a new connection", self.host, self.port)
                return UNAVAILABLE
            except FAILURES as exc:
                log.error("downstream %s:%s unavailable: %s", self.host, self.port, exc)
                return UNAVAILABLE
            except asyncio.CancelledError:
                if client is not None:
                    client.close()
                raise
            txn = SmtpTransaction(self, client)
            if resp.code != 250:
                await txn.abort()
                return Reply(resp.code, resp.message)
            return txn
        return UNAVAILABLE

    def _pop_idle(self) -> SMTP | None:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
            client.close()
        return None

    async def _connect(self) -> SMTP:
        client = SMTP(hostname=self.host, port=self.port, local_hostname=self.local_hostname,
                      timeout=self.timeout, start_tls=False)
        await client.connect()
        try:
            await client.ehlo()
        except BaseException:
            client.close()
            raise
        return client

    @staticmethod
    def _options(client: SMTP, options: list[str]) -> list[bytes]:
        # Only BODY= is passed on (and only where the downstream speaks 8BITMIME): SIZE= would
        # understate the message once spamd's headers are added.
        keep = [o for o in options if o.upper().startswith("BODY=") and client.supports_extension("8bitmime")]
        return [o.encode("ascii") for o in keep]

    def release(self, client: SMTP) -> None:
        if client.is_connected and len(self._idle) < self.pool_size:
            self._idle.append(client)
        else:
            client.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await client.quit(timeout=2)
            except FAILURES:
                client.close()
