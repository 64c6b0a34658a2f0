"""The aiosmtpd handler: the whole flow of one message, top-down, each hook's string is its reply.

MAIL opens a downstream transaction and RCPT asks the downstream about each recipient, so
the client hears the truth per recipient. XFORWARD from an MTA in [smtp] xforward_hosts names
the original client for the next transaction (xforward.py): it is logged as the message's
client and passed on to the downstream. At the end of DATA: strip forged X-Spam-* headers,
score (batched, off the loop), decide, then act (reject, tempfail, or add headers and send),
log one score-log row, and answer with what the downstream answered.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from spamd.errors import ScoringError
from spamd.mail.headers import strip_spam_headers
from spamd.scorelog import ScoreLogRow, ScoreLogSink, new_log_id
from spamd.scorer import Verdict
from spamd.smtp import replies, xforward
from spamd.smtp.actions import (
    Action,
    ActionPolicy,
    decide,
    message_id,
    received_line,
    rewrite,
    verdict_headers,
    with_protocol,
)
from spamd.smtp.batcher import Batcher
from spamd.smtp.forward import Downstream, Reply, Transaction

log = logging.getLogger("spamd.smtp")
score_log = logging.getLogger("spamd.score")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # in an address: refused (replies.BAD_SENDER, BAD_RECIPIENT)
# Messages larger than this have their X-Spam-* fields removed off the event loop: linear, but a
# header block of 25 MB (the default size limit) takes 0.65 s (`python -m bench.hostile`'s scale).
OFF_LOOP_BYTES = 1 << 20


class ProxyHandler:
    def __init__(self, batcher: Batcher, downstream: Downstream, sink: ScoreLogSink, policy: ActionPolicy,
                 scoring_timeout: float, max_recipients: int,
                 xforward_hosts: Sequence[xforward.Network] = (), received_by: str = "") -> None:
        self.batcher, self.downstream, self.sink = batcher, downstream, sink
        self.policy = policy  # replaced on reload
        self.scoring_timeout, self.max_recipients = scoring_timeout, max_recipients
        self.xforward_hosts = xforward_hosts
        self.received_by = received_by  # this host's name in the Received line spamd adds; "": none added
        self.draining = False
        self._open: dict[Session, Transaction] = {}  # transactions between MAIL and the end of DATA
        self._forwarded: dict[Session, dict[str, str]] = {}  # XFORWARD attributes for the next transaction
        self._idle = asyncio.Event()
        self._idle.set()

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname  # this hook's part of EHLO (aiosmtpd's "new" hook)
        await self._abort(session)  # EHLO ends a transaction in progress, as RSET does
        # aiosmtpd offers AUTH over TLS, with a login that always fails; spamd authenticates no one,
        # and an MTA set to use AUTH where offered would keep its mail queued on the failure.
        responses = [line for line in responses if not line.startswith("250-AUTH")]
        responses.insert(len(responses) - 1, "250-DSN")  # passed on (dsn.py)
        # RFC 2920, as Postfix's smtpd and amavisd-new offer it: an MTA sends MAIL, its RCPTs and DATA
        # in one go instead of waiting for each reply. aiosmtpd answers them in order from its
        # buffer, each RCPT with the downstream's own reply (it never offered it: lock-step only).
        responses.insert(len(responses) - 1, "250-PIPELINING")
        if xforward.authorized(session.peer, self.xforward_hosts):
            responses.insert(len(responses) - 1, "250-" + xforward.EHLO_LINE)
        return responses

    async def handle_XFORWARD(self, server: SMTP, session: Session, envelope: Envelope, arg: str) -> str:
        if not xforward.authorized(session.peer, self.xforward_hosts):
            return replies.XFORWARD_REFUSED
        if session in self._open:
            return replies.XFORWARD_IN_TRANSACTION
        try:
            attrs = xforward.parse(arg)
        except ValueError as exc:
            return f"{replies.XFORWARD_SYNTAX} ({exc})"
        self._forwarded.setdefault(session, {}).update(attrs)
        return replies.XFORWARD_OK

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        if self.draining:
            return replies.SHUTTING_DOWN
        if _CONTROL.search(address):
            return replies.BAD_SENDER
        await self._abort(session)  # HELO in mid-transaction resets the envelope without RSET (EHLO: handle_EHLO)
        options = mail_options + getattr(server, "dsn_mail", [])  # DSN's as written (SpamdSMTP.smtp_MAIL)
        # The null sender of bounces and notices (MAIL FROM:<>) reaches a handler as "<>", and stays
        # so in the envelope (aiosmtpd's RCPT needs a MAIL); downstream it is the empty address.
        sender = "" if address == "<>" else address
        begun = await self.downstream.begin(sender, options, self._forwarded.get(session, {}))
        if isinstance(begun, Reply):
            return begun.line
        self._open[session] = begun
        self._idle.clear()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.SENDER_OK

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        txn = self._open.get(session)
        if txn is None:
            return replies.DOWNSTREAM_UNAVAILABLE
        if address == "<>" or _CONTROL.search(address):  # (aiosmtpd answers an empty one itself)
            return replies.BAD_RECIPIENT
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        reply = await txn.add_recipient(address, rcpt_options + getattr(server, "dsn_rcpt", []))
        if reply.ok:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply.line

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self._abort(session)
        self._forwarded.pop(session, None)
        return replies.RESET_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        started = time.perf_counter()
        forwarded = self._forwarded.get(session)
        try:
            content = envelope.original_content or b""
            if len(content) > OFF_LOOP_BYTES:  # a header block of megabytes takes the loop's time from everyone
                raw, mid = await asyncio.to_thread(_read_envelope_content, content)
            else:
                raw, mid = _read_envelope_content(content)
            verdict, error = await self._score(raw, mid)
            action = decide(verdict, self.policy)
            log_id = new_log_id()
            reply = await self._act(session, envelope, raw, verdict, action, log_id)
        except BaseException:
            # The client went away while its message was scored or sent (aiosmtpd cancels this task
            # at its EOF, before `session_closed`), or something failed: nothing was accepted, and
            # the downstream transaction is dropped, its pooled connection's slot freed with it.
            txn = self._open.get(session)
            if txn is not None:
                txn.discard()
            raise
        finally:
            self._close(session)
        latency = (time.perf_counter() - started) * 1000
        client = xforward.logged_client(forwarded or {}, _peer(session), session.host_name or "")
        self._log(envelope, client, raw, mid, log_id, verdict, action, reply, error, latency)
        return reply.line

    async def data_refused(self, session: Session) -> None:
        """The protocol refused the DATA itself (too big, a line too long): the transaction is over
        unsent, so its downstream transaction is reset and its pooled connection freed now, not
        at the client's next command."""
        await self._abort(session)

    async def _score(self, raw: bytes, mid: str) -> tuple[Verdict | None, str]:
        if not self.policy.scoring:
            return None, ""
        if self.batcher.scorer is None:
            return None, "no model loaded"  # said once, loudly, at start: not again per message
        try:
            return await asyncio.wait_for(self.batcher.score(raw), self.scoring_timeout), ""
        except TimeoutError:
            score_log.error("%s scoring timed out after %.1fs", mid, self.scoring_timeout)
            return None, "timeout"
        except ScoringError as exc:
            score_log.error("%s scoring failed: %s", mid, exc)
            return None, str(exc)

    async def _act(self, session: Session, envelope: Envelope, raw: bytes, verdict: Verdict | None,
                   action: Action, log_id: str) -> Reply:
        txn = self._open.get(session)
        if txn is None:
            return Reply.parse(replies.DOWNSTREAM_UNAVAILABLE)
        if action is Action.REJECT:
            await txn.abort()
            return Reply.parse(replies.REJECTED_SPAM)
        if action is Action.TEMPFAIL:
            await txn.abort()
            return Reply.parse(replies.SCORING_TEMPFAIL)
        tag = self.policy.subject_tag if action is Action.TAG else ""
        headers = verdict_headers(verdict, log_id)
        if self.received_by:  # on top, above the X-Spam-* block: the copy spamd learns from loses it (as_scored)
            protocol = with_protocol(session.extended_smtp, session.ssl is not None, envelope.smtp_utf8)
            headers.insert(0, received_line(session.host_name or "", _peer(session), self.received_by, protocol,
                                            log_id, envelope.rcpt_tos))
        return await txn.send(rewrite(raw, headers, tag))

    def _log(self, envelope: Envelope, client: xforward.LoggedClient, raw: bytes, mid: str, log_id: str,
             verdict: Verdict | None, action: Action, reply: Reply, error: str, latency: float) -> None:
        outcome, failure = _outcome(action, reply)
        log.info("%s id=%s client=%s%s from=<%s> rcpts=%d %s score=%s -> %s (%.1f ms)", mid, log_id, client.addr or "-",
                 f" queue_id={client.queue_id}" if client.queue_id else "",
                 envelope.mail_from, len(envelope.rcpt_tos), verdict.label if verdict else "unknown",
                 f"{verdict.score:.4f}" if verdict else "-", reply.line, latency)
        self.sink.submit(ScoreLogRow(
            id=log_id, time=ScoreLogRow.now(), message_id=mid, sender=envelope.mail_from or "",
            recipients=tuple(envelope.rcpt_tos), client_addr=client.addr, size=len(raw),
            cnn_score=verdict.cnn if verdict else None, rnn_score=verdict.rnn if verdict else None,
            score=verdict.score if verdict else None, verdict=verdict.label if verdict else "unknown",
            action=outcome, long_context=verdict.long_context if verdict else False,
            model_version=verdict.model if verdict else None, latency_ms=latency,
            error=error or failure, queue_id=client.queue_id, extra=client.extra,
        ))

    async def _abort(self, session: Session) -> None:
        txn = self._open.get(session)
        if txn is not None:
            await txn.abort()
            self._close(session)

    def _close(self, session: Session) -> None:
        """The transaction is over (its DATA reply, RSET, or the client gone): XFORWARD's attributes with it."""
        self._open.pop(session, None)
        self._forwarded.pop(session, None)
        if not self._open:
            self._idle.set()

    def session_closed(self, session: Session) -> None:
        """The client went away: a transaction it left open is dropped (nothing was accepted)."""
        txn = self._open.pop(session, None)
        if txn is not None:
            txn.discard()
        self._close(session)

    async def drained(self) -> None:
        """Wait until no transaction is open (used by SIGTERM after new ones are refused)."""
        await self._idle.wait()


def _read_envelope_content(content: bytes) -> tuple[bytes, str]:
    """The message without X-Spam-* fields from outside, and its Message-ID for the logs."""
    raw = strip_spam_headers(content)
    return raw, message_id(raw)


def _outcome(action: Action, reply: Reply) -> tuple[str, str]:
    """The score log's action, and the downstream's refusal when the message was sent but not taken."""
    if action in (Action.REJECT, Action.TEMPFAIL) or reply.ok:
        return action.value, ""
    return f"{action.value}, delivery {reply.code}", reply.line


def _peer(session: Session) -> str:
    peer: Any = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer or "")
