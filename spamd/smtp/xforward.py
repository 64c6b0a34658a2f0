"""XFORWARD (Postfix's XFORWARD_README): who really sent a message, through the filter and on.

Behind a content filter, the MTA sees every message come from the filter, and the filter
sees every message come from the MTA. With XFORWARD the MTA tells spamd the original
client (NAME, ADDR, PORT, PROTO, HELO, IDENT, SOURCE) before MAIL FROM; spamd logs that
ADDR as the message's client and passes the attributes on to a downstream that announces
XFORWARD, so the reinjecting MTA's Received header and logs name the original client too.

The attributes hold for one MAIL transaction: they are reset when it ends (the DATA reply or
RSET). They change audit trails, so only clients in [smtp] xforward_hosts may send them, and
only those are offered the extension in the EHLO reply.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from spamd.errors import ConfigError

ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
UNAVAILABLE = "[UNAVAILABLE]"
EHLO_LINE = "XFORWARD " + " ".join(ATTRIBUTES)
MAX_VALUE = 255  # characters, xtext-encoded (XFORWARD_README, note 1)
MAX_COMMAND = 512  # an SMTP command line, CRLF included
_XTEXT_HEX = re.compile(r"\+([0-9A-Fa-f]{2})")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(hosts: Sequence[str]) -> list[Network]:
    """[smtp] xforward_hosts as networks; a ConfigError names a bad entry."""
    try:
        return [ipaddress.ip_network(h, strict=False) for h in hosts]
    except ValueError as exc:
        raise ConfigError(f"[smtp] xforward_hosts: {exc}") from exc


def authorized(peer: object, allowed: Sequence[Network]) -> bool:
    """Whether a client at `peer` (aiosmtpd's session.peer) may send XFORWARD."""
    if not isinstance(peer, tuple) or not peer:
        return False
    try:
        addr = ipaddress.ip_address(str(peer[0]).split("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in allowed)


def parse(arg: str) -> dict[str, str]:
    """`NAME=x ADDR=y ...` → {"NAME": "x", ...}, xtext-decoded; ValueError says what is wrong."""
    out: dict[str, str] = {}
    for item in arg.split():
        name, eq, value = item.partition("=")
        name = name.upper()
        if not eq:
            raise ValueError(f"expected attribute=value, got {item!r}")
        if name not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {name!r}")
        if len(value) > MAX_VALUE:
            raise ValueError(f"{name} is longer than {MAX_VALUE} characters")
        decoded = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value)
        if any(not 33 <= ord(c) <= 126 for c in decoded):
            raise ValueError(f"{name} holds a space, a control or a non-ASCII character")
        out[name] = UNAVAILABLE if decoded.upper() == UNAVAILABLE else decoded
    if not out:
        raise ValueError("no attribute")
    return out


@dataclass(frozen=True)
class LoggedClient:
    """What the score log keeps of a message's client."""

    addr: str  # the original client's address when forwarded, else the SMTP client's
    queue_id: str  # IDENT: the MTA's queue id, so that one from the MTA's log finds the verdict
    extra: dict[str, str]  # "helo" (the name it gave in HELO/EHLO) and "client_name" (NAME), when known


def logged_client(attrs: Mapping[str, str], peer_addr: str, helo: str) -> LoggedClient:
    """The client as the score log keeps it: from the XFORWARD attributes `attrs` where the MTA
    sent them (an unavailable one is left out), else the SMTP client itself (`peer_addr`, and
    the `helo` it gave spamd)."""
    if not attrs:
        return LoggedClient(peer_addr, "", {"helo": helo} if helo else {})
    known = {name: value for name, value in attrs.items() if value and value != UNAVAILABLE}
    addr = known.get("ADDR", "")
    addr = addr[5:] if addr.upper().startswith("IPV6:") else addr
    extra = {key: known[name] for key, name in (("helo", "HELO"), ("client_name", "NAME")) if name in known}
    return LoggedClient(addr, known.get("IDENT", ""), extra)


def commands(attrs: Mapping[str, str], offered: str) -> list[list[bytes]]:
    """The XFORWARD commands (each as its arguments) that pass `attrs` on to a downstream whose
    EHLO offered `offered` (its keyword's parameters: the attribute names it takes), each
    command within SMTP's 512 characters."""
    takes = {name.upper() for name in offered.split()}
    out: list[list[bytes]] = []
    length = 0
    for name, value in attrs.items():
        if name not in takes:
            continue
        item = f"{name}={_xtext(value)}".encode("ascii")
        if out and length + 1 + len(item) <= MAX_COMMAND - 2:
            out[-1].append(item)
            length += 1 + len(item)
        else:
            out.append([item])
            length = len("XFORWARD ") + len(item)
    return out


def _xtext(value: str) -> str:
    return "".join(c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}" for c in value)
