"""Reading raw messages from what users point at: files, directories, Maildir folders, mbox files.

`read_messages` yields one `Item` per message or per unreadable input, so a caller can
report each bad input with its reason and carry on with the rest.
"""

from __future__ import annotations

import mailbox
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Item:
    source: str  # path, "path#n" for the n-th message of an mbox, or "-" for stdin
    raw: bytes | None  # None when the input could not be read
    error: str = ""


def read_messages(paths: Iterable[str], stdin: BinaryIO | None = None) -> Iterator[Item]:
    seen: set[Path] = set()  # directories read, resolved: a link back up the tree is read once
    for arg in paths:
        if arg == "-":
            yield _read_stream(stdin)
        else:
            yield from _read_path(Path(arg), seen)


def _read_stream(stream: BinaryIO | None) -> Item:
    if stream is None:
        return Item("-", None, "no standard input")
    raw = stream.read(MAX_MESSAGE_BYTES + 1)
    if not raw:
        return Item("-", None, "standard input is empty")
    return _checked("-", raw)


def _read_path(path: Path, seen: set[Path]) -> Iterator[Item]:
    if path.is_dir():
        yield from _read_dir(path, seen)
    elif not path.exists():
        yield Item(str(path), None, "no such file or directory")
    elif _is_mbox(path):
        yield from _read_mbox(path)
    else:
        yield _read_file(path)


def _read_dir(path: Path, seen: set[Path]) -> Iterator[Item]:
    real = path.resolve()
    if real in seen:  # a symbolic link loop once printed every message some 40 times
        return
    seen.add(real)
    # A Maildir's messages live in cur/ and new/; tmp/ holds half-delivered files.
    if (path / "cur").is_dir() and (path / "new").is_dir():
        dirs = [path / "cur", path / "new"]
    else:
        dirs = [path]
    for d in dirs:
        try:
            entries = sorted(d.iterdir())
        except OSError as exc:
            yield Item(str(d), None, exc.strerror or str(exc))
            continue
        in_part_of_a_maildir = (d / "new").is_dir()  # its tmp/ is a Maildir's; elsewhere a tmp/ is read
        for entry in entries:
            if entry.name.startswith(".") or entry.name == "tmp" and in_part_of_a_maildir and entry.is_dir():
                continue
            yield from _read_path(entry, seen)


def _read_file(path: Path) -> Item:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_MESSAGE_BYTES + 1)
    except OSError as exc:
        return Item(str(path), None, exc.strerror or str(exc))
    return _checked(str(path), raw)


def _checked(source: str, raw: bytes) -> Item:
    if not raw.strip():
        return Item(source, None, "empty message")
    if len(raw) > MAX_MESSAGE_BYTES:
        return Item(source, None, f"larger than {MAX_MESSAGE_BYTES} bytes")
    return Item(source, raw)


def _is_mbox(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(5) == b"From "
    except OSError:
        return False


def _read_mbox(path: Path) -> Iterator[Item]:
    try:
        box = mailbox.mbox(str(path), create=False)
        keys = list(box.keys())
    except (OSError, mailbox.Error) as exc:
        yield Item(str(path), None, str(exc))
        return
    try:
        for n, key in enumerate(keys):
            try:
                raw = box.get_bytes(key)
            except (OSError, mailbox.Error) as exc:
                yield Item(f"{path}#{n}", None, str(exc))
                continue
            yield _checked(f"{path}#{n}", raw)
    finally:
        box.close()
