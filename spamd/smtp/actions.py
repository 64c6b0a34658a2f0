"""Verdict → action (decided apart from acting), and the headers and Subject tag that carry it."""

from __future__ import annotations

import email.utils
import enum
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from spamd.config import ScoringConfig
from spamd.mail.headers import prepend_headers, split_header_block, tag_subject
from spamd.scorer import Verdict

_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")  # in a client's HELO name, as Postfix's smtpd prints it: "?"
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]{0,500}>|[^\r\n]{0,500})", re.IGNORECASE | re.MULTILINE)


class Action(enum.Enum):
    PASS = "passed"  # ham: forwarded with headers
    TAG = "tagged"  # spam: forwarded with X-Spam-Flag: YES (and the Subject tag, if any)
    REJECT = "rejected"  # at/above the reject threshold: 550 5.7.1, not forwarded
    FAIL_OPEN = "failed-open"  # scoring failed: forwarded untagged, X-Spam-Status: Unknown
    TEMPFAIL = "tempfailed"  # scoring failed and on_failure = "tempfail": 451
    UNSCORED = "unscored"  # [scoring] enabled = false: relayed with X-Spam-Status: Unknown


@dataclass(frozen=True)
class ActionPolicy:
    reject_threshold: float | None = None  # None: never reject
    subject_tag: str = ""
    tempfail_on_error: bool = False
    scoring: bool = True  # False: nothing is scored, everything is relayed

    @classmethod
    def from_config(cls, scoring: ScoringConfig) -> ActionPolicy:
        return cls(scoring.reject_threshold, scoring.subject_tag, scoring.on_failure == "tempfail", scoring.enabled)


def decide(verdict: Verdict | None, policy: ActionPolicy) -> Action:
    """What to do with a message, given its verdict (None: scoring failed, or is switched off)."""
    if not policy.scoring:
        return Action.UNSCORED
    if verdict is None:
        return Action.TEMPFAIL if policy.tempfail_on_error else Action.FAIL_OPEN
    if policy.reject_threshold is not None and verdict.score >= policy.reject_threshold:
        return Action.REJECT
    return Action.TAG if verdict.is_spam else Action.PASS


def verdict_headers(verdict: Verdict | None, log_id: str) -> list[tuple[str, str]]:
    """The X-Spam-* fields for a verdict; a failed scoring gets only `Unknown` and the log id."""
    if verdict is None:
        return [("X-Spam-Status", "Unknown"), ("X-Spam-Id", log_id)]
    rnn = "none" if verdict.rnn is None else f"{verdict.rnn:.4f}"
    status = (
        f"{'Yes' if verdict.is_spam else 'No'}, score={verdict.score:.4f} threshold={verdict.threshold:.4f}"
        f" cnn={verdict.cnn:.4f} rnn={rnn} long_context={'yes' if verdict.long_context else 'no'}"
        f" model={verdict.model}"
    )
    return [
        ("X-Spam-Flag", "YES" if verdict.is_spam else "NO"),
        ("X-Spam-Score", f"{verdict.score:.4f}"),
        ("X-Spam-Status", status),
        ("X-Spam-Id", log_id),
    ]


def received_line(helo: str, addr: str, by: str, protocol: str, log_id: str, recipients: Sequence[str],
                  date: str | None = None) -> tuple[str, str]:
    """The trace field spamd puts on top of a message it received (RFC 5321 4.4), after Postfix's
    smtpd: the client's HELO name and address, this host, the protocol (RFC 3848, 6531), spamd's id
    for the message (its X-Spam-Id), the recipient when there is only one, and the date."""
    helo = _UNPRINTABLE.sub("?", helo[:255]) or "unknown"
    try:
        literal = f"IPv6:{addr}" if ipaddress.ip_address(addr).version == 6 else addr
    except ValueError:
        literal = _UNPRINTABLE.sub("?", addr[:64]) or "unknown"  # a Unix socket, say
    value = f"from {helo} ([{literal}])\n\tby {by} (spamd) with {protocol} id {log_id}"
    if len(recipients) == 1:
        value += f"\n\tfor <{recipients[0]}>"
    return "Received", f"{value}; {date or email.utils.formatdate(localtime=True)}"


def with_protocol(extended: bool, tls: bool, smtputf8: bool) -> str:
    """The Received line's "with": SMTP or ESMTP, UTF8SMTP for a transaction with SMTPUTF8, and an S
    for one over TLS (the registered names of RFC 3848 and RFC 6531; spamd authenticates no one)."""
    name = "UTF8SMTP" if smtputf8 else "ESMTP" if extended else "SMTP"
    return name + "S" if tls else name


def rewrite(raw: bytes, headers: list[tuple[str, str]], subject_tag: str = "") -> bytes:
    """The message to forward: the original bytes with `headers` in front (and the Subject tagged)."""
    if subject_tag:
        raw = tag_subject(raw, subject_tag)
    return prepend_headers(raw, headers)


def message_id(raw: bytes) -> str:
    """The Message-ID for log lines (cheap: one search of the header block; '<none>' if absent)."""
    block, _ = split_header_block(raw)
    m = _MESSAGE_ID.search(block)
    return m.group(1).decode("ascii", "replace").strip() if m else "<none>"
