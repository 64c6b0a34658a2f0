"""A SIGHUP that comes before `spamd serve` can reload is remembered, not fatal.

SIGHUP's default action ends a process, and loading torch and the models takes seconds: a
`systemctl reload` just after a start killed a worker, and the supervisor then stopped the
whole daemon as one that "could not start". `defer` is called first thing by `spamd serve` and by
each worker; once the daemon's own handler is in place, a pending SIGHUP becomes one reload.
"""

from __future__ import annotations

import signal
import threading

PENDING = threading.Event()


def defer() -> None:
    """From now until the daemon installs its own handler, a SIGHUP only sets PENDING."""
    signal.signal(signal.SIGHUP, lambda _signum, _frame: PENDING.set())


def take() -> bool:
    """Whether a SIGHUP came while deferred (and forget it)."""
    if PENDING.is_set():
        PENDING.clear()
        return True
    return False
