"""Header-level operations on raw bytes: split, strip spamd's own headers, prepend, fingerprint.

These work on bytes so that the message spamd forwards is the original, never a
re-serialised one, and so that no pathological header can make the stdlib parser slow.
"""

from __future__ import annotations

import hashlib
import re

_SPAM_HEADER = re.compile(rb"x-spam-", re.IGNORECASE)
_LINE_END = rb"(?:\r\n|\r|\n|\Z)"
# An X-Spam-* field and its continuation lines, from the start of a line (see `header_fields`).
_SPAM_FIELD = re.compile(rb"(?:(?<=[\r\n])|\A)x-spam-[^\r\n]*" + _LINE_END + rb"(?:[ \t][^\r\n]*" + _LINE_END + rb")*",
                         re.IGNORECASE)
SPAM_ID = re.compile(rb"^x-spam-id:[ \t]*([0-9a-f]{20})\b", re.IGNORECASE | re.MULTILINE)  # spamd's score-log id
_SPAM_FLAG_YES = re.compile(rb"x-spam-flag:[ \t]*yes\b", re.IGNORECASE)
_SUBJECT = re.compile(rb"^subject:[ \t]*", re.IGNORECASE | re.MULTILINE)


def split_header_block(raw: bytes) -> tuple[bytes, bytes]:
    """Return (header block including its last line break, rest including the empty line).

    The block ends at the first empty line; mail in the wild mixes CRLF and LF, so that is
    the first LF followed by LF or CRLF. (Two `find`s: a regex here costs more per message.)
    """
    ends = [i for i in (raw.find(b"\n\n"), raw.find(b"\n\r\n")) if i >= 0]
    if not ends:
        return raw, b""
    cut = min(ends) + 1
    return raw[:cut], raw[cut:]


def header_fields(block: bytes) -> list[bytes]:
    """Split a header block into logical fields, each with its continuation lines (a line break
    is CRLF, CR or LF, as `bytes.splitlines` reads them). Linear in the block's size: adding each
    continuation line to its field's bytes was quadratic (seconds on a header of a megabyte)."""
    fields: list[list[bytes]] = []
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return [b"".join(f) for f in fields]


def strip_spam_headers(raw: bytes) -> bytes:
    """Remove every X-Spam-* field, ours or forged by a sender, leaving the rest byte-identical.

    One regular expression over the header block, which the event loop runs for every message:
    a field is a line that begins "X-Spam-", with the lines after it that begin with a space or
    a tab, as `header_fields` splits them."""
    block, rest = split_header_block(raw)
    if not _SPAM_HEADER.search(block):
        return raw
    return _SPAM_FIELD.sub(b"", block) + rest


def as_scored(raw: bytes, subject_tag: str = "") -> bytes:
    """A delivered copy back to the bytes spamd scored: the fields that later hops wrote above
    spamd's block (Return-Path, Delivered-To, the reinjection's Received...) go with the block.
    spamd's block is the topmost X-Spam-* run, when it holds an X-Spam-Id (spamd removes every
    X-Spam-* field it receives before adding its own, so no sender's can sit above it). A message
    without one has its X-Spam-* fields removed and nothing else. Where the block says spam, the
    `subject_tag` ([scoring] subject_tag) spamd put on the Subject comes off too, as SpamAssassin
    takes its own off before it learns: a model must not learn a mark live mail never has."""
    block, rest = split_header_block(raw)
    fields = header_fields(block)
    first = next((i for i, f in enumerate(fields) if _SPAM_HEADER.match(f)), None)
    if first is None:
        return raw
    run = fields[first:]
    end = next((i for i, f in enumerate(run) if not _SPAM_HEADER.match(f)), len(run))
    if not any(SPAM_ID.match(f) for f in run[:end]):
        return strip_spam_headers(raw)
    scored = b"".join(run[end:]) + rest
    if subject_tag and any(_SPAM_FLAG_YES.match(f) for f in run[:end]):
        scored = untag_subject(scored, subject_tag)
    return strip_spam_headers(scored)


def tag_subject(raw: bytes, tag: str) -> bytes:
    """Insert `tag` at the start of the Subject's value; a message without a Subject gets one."""
    block, rest = split_header_block(raw)
    m = _SUBJECT.search(block)
    if m is None:
        return prepend_headers(raw, [("Subject", tag.rstrip())])
    return block[: m.end()] + tag.encode("utf-8") + block[m.end() :] + rest


def untag_subject(raw: bytes, tag: str) -> bytes:
    """`tag_subject` undone: the Subject spamd added (the first field, the only Subject, and the tag
    alone), or the tag at the start of the Subject's value. Anything else is left as it is."""
    block, rest = split_header_block(raw)
    fields = header_fields(block)
    if fields and fields[0].rstrip(b"\r\n") == b"Subject: " + tag.rstrip().encode("utf-8") \
            and len(_SUBJECT.findall(block)) == 1:
        return raw[len(fields[0]):]
    m = _SUBJECT.search(block)
    mark = tag.encode("utf-8")
    if m is None or not block.startswith(mark, m.end()):
        return raw
    return block[: m.end()] + block[m.end() + len(mark) :] + rest


def fingerprint(raw: bytes) -> str:
    """sha256 of the message as spamd learns it: its own X-Spam-* headers removed."""
    return hashlib.sha256(strip_spam_headers(raw)).hexdigest()


def with_lf(raw: bytes) -> bytes:
    """The message with each CRLF line ending made LF, as Unix keeps mail on disk (a Maildir, an
    mbox): what Postfix's local(8) and Dovecot's LDA write, and what the mailboxes users label from
    hold. The models read both alike (`parse`), so a copy with either is one message to learn."""
    return raw.replace(b"\r\n", b"\n")


def as_learned(raw: bytes, subject_tag: str = "") -> bytes:
    """A message as spamd keeps it to learn from (labels, training files): as it scored it
    (`as_scored`, with the site's `subject_tag`), with LF line endings (`with_lf`). Every copy of
    one message gives these bytes."""
    return with_lf(as_scored(raw, subject_tag))


def prepend_headers(raw: bytes, headers: list[tuple[str, str]]) -> bytes:
    """Put header fields in front of the original bytes, using the message's own line ending (a value
    folded over lines, with "\n" and a space or tab, gets it at each fold too)."""
    block, _ = split_header_block(raw)
    eol = b"\r\n" if b"\r\n" in block[:2000] else b"\n"
    added = b"".join(f"{name}: {value}".encode("utf-8", "replace").replace(b"\n", eol) + eol
                     for name, value in headers)
    return added + raw
