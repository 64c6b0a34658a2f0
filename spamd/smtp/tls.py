"""TLS to an smtp:// or smtps:// downstream ([delivery] tls, after Postfix's smtp_tls_security_level),
and STARTTLS for the MTA that sends to spamd ([smtp] tls_cert_file, tls_key_file, require_tls).

    none     plain SMTP (the default: the embedded default delivers into a local Maildir, and
             a reinjection port on loopback needs no TLS)
    may      STARTTLS when the downstream offers it, its certificate unchecked; else plain (a
             STARTTLS offered but failing → 451 4.7.5, not a fall back to plain)
    encrypt  STARTTLS or nothing, certificate unchecked: no STARTTLS offered → 451 4.7.4
    verify   STARTTLS or nothing, and the certificate must chain to [delivery] tls_ca_file (else
             the system's CAs) and name the host in the url: a failed check → 451 4.7.5

An unchecked certificate keeps out whoever only listens on the wire, not whoever sits in the
middle of it: only "verify" does that. smtps://host:port speaks TLS from the first byte (no
STARTTLS) and so takes only "encrypt" or "verify". The SSLContext is built once, when the
downstream is opened at start, so a bad CA file stops spamd there rather than failing mail.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from spamd.config import TlsLevel
from spamd.errors import ConfigError


@dataclass(frozen=True)
class DownstreamTls:
    level: TlsLevel = "none"
    implicit: bool = False  # smtps://: the handshake comes first, before the greeting
    context: ssl.SSLContext | None = None  # None only with "none"

    @property
    def starttls(self) -> bool:
        """Whether each new connection asks for STARTTLS after its EHLO."""
        return self.level != "none" and not self.implicit


def downstream_tls(level: TlsLevel, implicit: bool, ca_file: Path | None) -> DownstreamTls:
    """The TLS policy for the downstream; a ConfigError for settings that cannot mean what they say."""
    if implicit and level not in ("encrypt", "verify"):
        raise ConfigError(f'[delivery] url smtps:// is TLS from the first byte: it needs tls = "encrypt" or '
                          f'"verify", not {level!r}')
    if ca_file is not None and level != "verify":
        # Set but unread, it would let an operator believe certificates are checked.
        raise ConfigError(f'[delivery] tls_ca_file is read only with tls = "verify", not {level!r}')
    if level == "none":
        return DownstreamTls()
    return DownstreamTls(level, implicit, _context(level == "verify", ca_file))


def _context(verify: bool, ca_file: Path | None) -> ssl.SSLContext:
    # With a CA file, only its CAs are trusted (as Postfix's smtp_tls_CAfile does by default):
    # a private downstream's certificate should not be matched by any public CA's.
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[delivery] tls_ca_file {ca_file}: {exc}") from exc
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def listener_context(cert: Path | None, key: Path | None, require: bool) -> ssl.SSLContext | None:
    """The SSLContext of spamd's own STARTTLS (None: not offered); a ConfigError for settings that cannot work.

    For an MTA on another host (on loopback TLS adds nothing). Like Postfix's smtpd it asks for
    no client certificate: who may send is [smtp] listen's and the firewall's business.
    """
    if (cert is None) != (key is None):
        raise ConfigError("[smtp] tls_cert_file and tls_key_file go together: set both, or neither")
    if cert is None or key is None:
        if require:
            raise ConfigError("[smtp] require_tls needs tls_cert_file and tls_key_file")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[smtp] tls_cert_file {cert} / tls_key_file {key}: {exc}") from exc
    return context
