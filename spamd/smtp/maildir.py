"""maildir:PATH delivery: each message written in tmp/, synced, then renamed into new/ (atomic).

The Maildir is the final delivery, so the envelope goes on top of the message as a delivery agent
writes it (Postfix's local(8), Dovecot's LDA): `Return-Path: <sender>` (RFC 5321 4.4) and a
`Delivered-To:` for each recipient. Lines end in LF, as a delivery agent stores mail on a Unix
disk (the SMTP wire's CRLF is its transport form). It is one catch-all mailbox: one copy for all
recipients.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from spamd.durable import fsync_path
from spamd.mail.headers import prepend_headers, with_lf
from spamd.smtp import replies
from spamd.smtp.forward import Reply, Transaction

log = logging.getLogger("spamd.smtp")
_counter = itertools.count()


def deliver(root: Path, message: bytes) -> str:
    """Write one message into the Maildir at `root` and return its file name (blocking)."""
    try:
        return _deliver(root, message)
    except FileNotFoundError:
        # No Maildir yet, or a part of it removed since (an operator moving mail away): made
        # now, as Postfix's local(8) makes a missing Maildir. If that fails, the client hears 451.
        ensure_maildir(root)
        return _deliver(root, message)


def _deliver(root: Path, message: bytes) -> str:
    """One try at `deliver`.

    The message is on disk before this returns: the file is synced before the rename, and
    `new/` after it, so a crash after the client heard 250 cannot undo the delivery. If the
    write or the rename fails, the file in `tmp/` is removed and the error raised: the client
    is told to retry, and its retry leaves one copy, not an orphan in `tmp/` beside it. (If only
    the last sync fails, the message is in `new/` and the retry may make a second copy: a
    duplicate rather than a loss, as MTAs choose.)
    """
    name = f"{time.time_ns()}.P{os.getpid()}Q{next(_counter)}.{socket.gethostname().replace('/', '_')}"
    tmp = root / "tmp" / name
    f = open(tmp, "xb")  # outside the try: if it fails, nothing was created to remove
    try:
        with f:
            f.write(message)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, root / "new" / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(root / "new")
    return name


def ensure_maildir(root: Path) -> None:
    """Make the Maildir (and the directories above it) where parts are missing, each one on disk
    before a message is: a crash after the 250 must not take a new directory, and the message in it."""
    missing = [p for p in (root, *root.parents) if not p.exists()]
    for sub in ("tmp", "new", "cur"):
        if not (root / sub).exists():
            missing.insert(0, root / sub)
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for made in missing:  # each new directory's entry is in its parent: sync the parents
        fsync_path(made.parent)


class MaildirTransaction:
    def __init__(self, root: Path, sender: str) -> None:
        self.root = root
        self.sender = sender
        self.recipients: list[str] = []

    async def add_recipient(self, address: str, options: list[str]) -> Reply:
        self.recipients.append(address)
        return Reply.parse(replies.RECIPIENT_OK)

    async def send(self, message: bytes) -> Reply:
        envelope = [("Return-Path", f"<{self.sender}>"), *(("Delivered-To", r) for r in self.recipients)]
        message = with_lf(prepend_headers(message, envelope))
        try:
            name = await asyncio.to_thread(deliver, self.root, message)
        except OSError as exc:
            log.error("maildir delivery into %s failed: %s", self.root, exc)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # said as it is, as Postfix says it
                return Reply.parse(replies.INSUFFICIENT_STORAGE)
            return Reply.parse(replies.DOWNSTREAM_UNAVAILABLE)
        log.debug("delivered into %s/new/%s", self.root, name)
        return Reply.parse(replies.DELIVERED)

    async def abort(self) -> None:
        return None

    def discard(self) -> None:
        return None


class MaildirDownstream:
    """The embedded default: a local Maildir, so a fresh checkout runs end to end with no MTA."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def begin(self, sender: str, options: list[str], forwarded: Mapping[str, str]) -> Transaction | Reply:
        return MaildirTransaction(self.root, sender)  # `deliver` makes the Maildir when it is missing

    async def close(self) -> None:
        return None
