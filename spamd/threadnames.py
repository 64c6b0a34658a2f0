"""OS names for spamd's threads, so `top -H`, `ps -L -o tid,comm,time` and /proc show which
thread does what (the scoring thread, the RNN thread, the score-log writer...).

Python names its threads only for itself; the kernel knows every one of them as the
program's name ("python"). Linux gives each thread a name of up to 15 bytes (prctl
PR_SET_NAME, the name in /proc/PID/task/TID/comm), as nginx, PostgreSQL and Postfix
name their processes. Elsewhere naming does nothing.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

_PR_SET_NAME = 15
MAX_NAME = 15  # bytes; the kernel cuts longer names


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def name_thread(name: str) -> bool:
    """Name the calling thread for the OS (cut to 15 bytes); False where the platform cannot."""
    if _PRCTL is None:
        return False
    return _PRCTL(_PR_SET_NAME, ctypes.c_char_p(name.encode("ascii", "replace")[:MAX_NAME]), 0, 0, 0) == 0


def named_executor(name: str, max_workers: int | None = None) -> ThreadPoolExecutor:
    """A thread pool whose threads carry `name` for Python and for the OS."""
    return ThreadPoolExecutor(max_workers, name, name_thread, (name,))
