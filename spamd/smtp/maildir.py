"""maildir:PATH delivery: each message written in tmp/, synced, then renamed into new/ (atomic)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from spamd.smtp import replies
from spamd.smtp.forward import Reply, Transaction

log = logging.getLogger("spamd.smtp")
_counter = itertools.count()


def deliver(root: Path, message: bytes) -> str:
    """Write one message into the Maildir at `root` and return its file name (blocking)."""
    name = f"{time.time_ns()}.P{os.getpid()}Q{next(_counter)}.{socket.gethostname().replace('/', '_')}"
    tmp = root / "tmp" / name
    with open(tmp, "xb") as f:
        f.write(message)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, root / "new" / name)
    return name


def ensure_maildir(root: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)


class MaildirTransaction:
    def __init__(self, root: Path) -> None:
        self.root = root

    async def add_recipient(self, address: str, options: list[str]) -> Reply:
        return Reply.parse(replies.RECIPIENT_OK)

    async def send(self, message: bytes) -> Reply:
        try:
            name = await asyncio.to_thread(deliver, self.root, message)
        except OSError as exc:
            log.error("maildir delivery into %s failed: %s", self.root, exc)
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
        self._ready = False

    async def begin(self, sender: str, options: list[str], forwarded: Mapping[str, str]) -> Transaction | Reply:
        if not self._ready:
            try:
                await asyncio.to_thread(ensure_maildir, self.root)
            except OSError as exc:
                log.error("cannot create maildir %s: %s", self.root, exc)
                return Reply.parse(replies.DOWNSTREAM_UNAVAILABLE)
            self._ready = True
        return MaildirTransaction(self.root)

    async def close(self) -> None:
        return None
