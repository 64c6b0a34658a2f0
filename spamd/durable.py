"""Making a write survive a crash: the one helper that modelstore and maildir delivery share."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file or a directory to disk. After a rename, syncing the directory makes the new
    name itself durable; syncing a file before its rename means a rename never exposes unwritten data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
