"""`read_data` reads DATA as aiosmtpd's line-by-line loop does, in a few reads of the buffer.

The reference below is that loop's rule, line by line; hypothesis feeds both the same bytes,
cut into arbitrary chunks, through a real StreamReader with small limits, so the slow paths
(no dot line within the reader's limit, a CRLF split across reads) are walked as often as the
fast one.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from spamd.smtp.protocol import LINE_TOO_LONG, TOO_MUCH_DATA, read_data

LINES = st.sampled_from([b"", b".", b"..", b"...", b"a.", b".a", b"a..", b"x" * 9, b"y" * 40, b"\r", b"\n",
                         b"a\rb", b"a\n.b", b"\r.", b"z.\r"])
NEXT = b"QUIT\r\n"  # what the client sends after DATA: never read by it


def reference(wire: bytes, size_limit: int | None, line_limit: int) -> tuple[bytes, set[str], bytes]:
    """aiosmtpd 1.4's DATA loop as a rule: CRLF lines up to a lone "." (the rest is left unread),
    each line's first dot taken off."""
    data, size, refusals, read = [], 0, set(), 0
    for line in wire.split(b"\r\n")[:-1]:
        read += len(line) + 2
        if line == b".":
            break
        size += len(line) + 2
        if len(line) + 2 > line_limit:
            refusals.add(LINE_TOO_LONG)
        if size_limit and size > size_limit:
            refusals.add(TOO_MUCH_DATA)
        data.append((line[1:] if line.startswith(b".") else line) + b"\r\n")
    return b"".join(data), refusals, wire[read:]


async def read(chunks: list[bytes], size_limit: int | None, line_limit: int) -> tuple[bytes, str, bytes]:
    reader = asyncio.StreamReader(limit=line_limit)
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    content, refusal = await read_data(reader, size_limit, line_limit)
    return content, refusal, await reader.read()


@settings(max_examples=400, deadline=None)
@given(lines=st.lists(LINES, max_size=30), cuts=st.lists(st.integers(0, 400), max_size=6),
       size_limit=st.sampled_from([None, 50, 200]), line_limit=st.sampled_from([12, 45, 1000]))
def test_read_data_reads_what_aiosmtpd_reads(lines, cuts, size_limit, line_limit):
    wire = b"".join(line + b"\r\n" for line in lines) + b".\r\n" + NEXT
    edges = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    chunks = [wire[a:b] for a, b in zip(edges, edges[1:], strict=False)]
    content, refusal, after = asyncio.run(read(chunks, size_limit, line_limit))
    expected, refusals, rest = reference(wire, size_limit, line_limit)
    assert after == rest  # nothing after the (first) dot line was taken
    if refusals:
        assert (content, refusal in refusals) == (b"", True)
    else:
        assert (content, refusal) == (expected, "")


def test_a_message_that_is_only_the_dot_line_is_empty():
    assert asyncio.run(read([b".\r\n" + NEXT], None, 1000)) == (b"", "", NEXT)


def test_dots_are_unstuffed_once_per_line_and_only_at_line_starts():
    wire = b"..a\r\nb.\r\n...\r\nc..d\r\n.\r\n" + NEXT
    assert asyncio.run(read([wire], None, 1000))[0] == b".a\r\nb.\r\n..\r\nc..d\r\n"
