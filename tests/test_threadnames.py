"""OS thread names: what `top -H` and /proc show for spamd's threads."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from spamd.threadnames import name_thread

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names are read from /proc")


def _named(name: str) -> tuple[bool, str]:
    out: list[tuple[bool, str]] = []

    def run() -> None:
        ok = name_thread(name)
        out.append((ok, Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out[0]


@linux
def test_a_thread_is_named_for_the_os_and_only_that_thread():
    before = Path("/proc/self/comm").read_text()
    assert _named("spamd-score") == (True, "spamd-score")
    assert Path("/proc/self/comm").read_text() == before  # the calling process keeps its name


@linux
def test_a_long_name_is_cut_to_the_kernels_15_bytes():
    assert _named("spamd-scorelog-writer") == (True, "spamd-scorelog-")
