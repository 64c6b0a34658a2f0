"""The seam to the downstream: a transaction opened at MAIL, asked per RCPT, sent at DATA's end.

The envelope is relayed as the client gives it, so every recipient gets the downstream's own
answer at RCPT time (SMTP's DATA has one reply for all recipients: a refusal known only after
DATA could not reach the client, and would become "250 and drop"). Two implementations:
`relay.SmtpDownstream` (smtp:// or smtps://host:port, pooled aiosmtplib connections, TLS as
[delivery] tls says: tls.py) and
`maildir.MaildirDownstream` (maildir:PATH, the embedded default).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from spamd.config import Config
from spamd.errors import ConfigError

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def line(self) -> str:
        """The reply as one SMTP line (a multi-line downstream reply is folded into one), in printable
        ASCII: a downstream's reply may hold 8-bit bytes (sendmail echoes an address as the client
        wrote it), and one the client cannot be sent would leave it a 500 for a delivered message."""
        return _UNPRINTABLE.sub("?", f"{self.code} {' '.join(self.text.split())}".rstrip())

    @classmethod
    def parse(cls, line: str) -> Reply:
        code, _, text = line.partition(" ")
        return cls(int(code), text)


class Transaction(Protocol):
    """One message on its way downstream. Methods answer with a Reply, never raise.

    `abort` ends it politely (RSET) when the client resets or spamd refuses the message;
    `discard` drops it at once when the client has gone away.
    """

    async def add_recipient(self, address: str, options: list[str]) -> Reply: ...

    async def send(self, message: bytes) -> Reply: ...

    async def abort(self) -> None: ...

    def discard(self) -> None: ...


class Downstream(Protocol):
    """Where scored mail goes. `begin` answers the MAIL command: a Transaction, or why not.
    `forwarded`: the XFORWARD attributes the client gave for this transaction (none: {})."""

    async def begin(self, sender: str, options: list[str], forwarded: Mapping[str, str]) -> Transaction | Reply: ...

    async def close(self) -> None: ...


def open_downstream(cfg: Config) -> Downstream:
    """The downstream named by [delivery] url."""
    from spamd.smtp.maildir import MaildirDownstream
    from spamd.smtp.relay import SmtpDownstream
    from spamd.smtp.tls import downstream_tls

    d = cfg.delivery
    if d.url.startswith("maildir:"):
        path = d.url[len("maildir:") :].strip()
        if not path:
            raise ConfigError(f"[delivery] url {d.url!r} names no Maildir (maildir:PATH)")
        return MaildirDownstream(cfg.path(os.path.expanduser(path)))  # ~/Maildir: the user's, as a shell reads it
    for scheme in ("smtp://", "smtps://"):
        if d.url.startswith(scheme):
            host, _, port = d.url[len(scheme) :].rstrip("/").rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"[delivery] url {d.url!r} must look like {scheme}host:port")
            tls = downstream_tls(d.tls, scheme == "smtps://", cfg.path(d.tls_ca_file) if d.tls_ca_file else None)
            return SmtpDownstream(host.strip("[]"), int(port), cfg.smtp.hostname, d.timeout, d.pool_size, tls)
    raise ConfigError(f"[delivery] url {d.url!r} must start with smtp://, smtps:// or maildir:")
