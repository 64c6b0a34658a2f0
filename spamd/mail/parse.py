"""Raw bytes → ParsedMail: the readable parts of a message, guarded in size and time.

Parsing never raises: whatever cannot be read is skipped, and the message is scored
on the rest. Limits keep any message under a few milliseconds: the header block is
cleaned of over-long fields before the stdlib parser sees it (one corpus message has a
Content-Type with thousands of empty parameters that takes seconds in email.policy),
only the first `max_bytes` of a message are parsed, and text per part is capped.
"""

from __future__ import annotations

import codecs
import email
import email.header
import re
from dataclasses import dataclass, field
from email import policy
from email.message import Message

from spamd.mail.headers import header_fields, split_header_block, strip_spam_headers, with_lf
from spamd.mail.html import html_links, html_to_text

MAX_PARSE_BYTES = 512 * 1024
MAX_FIELD_BYTES = 1024
MAX_PART_CHARS = 64 * 1024
MAX_PARTS = 64
MAX_LINK_DOMAINS = 64  # link targets whose domain is read (all of them are counted)
MAX_FIELDS = 1000  # header fields read from a header block
# A message with MIME structure is read flat (`_check_structure`) beyond any of these, in its body:
MAX_LINES = 100_000  # lines (real mail of MAX_PARSE_BYTES has a few thousand)
MAX_BOUNDARY_TESTS = 500_000  # lines times the boundaries declared, each line's tests in the stdlib's parser
MAX_PART_MARKERS = 5000  # lines beginning "--", which may open a part
MAX_MIME_FIELDS = 1000  # Content-* fields
# Charsets no mail is written in, whose codecs are pure Python and slow on long text (punycode is
# quadratic: 2.8 s for three parts of 128 kB), or fail on any input: read as an unknown charset is.
_REFUSED_CODECS = frozenset({"punycode", "idna", "undefined"})

# A link in text: `(?:https?://|www\.)[\w.-]{1,200}` case-insensitively (where "ſ" folds to
# "s"), spelled to begin with one character class: the regex engine then skips from candidate
# letter to candidate letter instead of trying both branches at every position (3x faster
# on the test messages' text, timed by hand).
_URL = re.compile(r"[hHwW](?:(?<=[hH])[tT]{2}[pP][sSſ]?://|(?<=[wW])[wW]{2}\.)[\w.-]{1,200}")
_CHARSET = re.compile(r"""charset\s*=\s*"?([\w.:-]{1,40})""", re.IGNORECASE)
_ADDR_DOMAIN = re.compile(r"@([\w.-]+)")
_URL_SCHEME = re.compile(r"^(?:https?://|www\.)", re.IGNORECASE)
_URL_PATH = re.compile(r"[/?#:]")
_SCAFFOLDING = re.compile(rb"^(?:--[^\n]*|content-[\w-]*:[^\n]*|mime-version:[^\n]*|[ \t]*)\n",
                          re.IGNORECASE | re.MULTILINE)
_FILENAME = re.compile(r"(?:^|;)\s*(?:file)?name\b", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedMail:
    """What spamd reads of a message. Built by `parse`; holds no I/O."""

    headers: tuple[tuple[str, str], ...]
    subject: str
    from_name: str
    from_domain: str
    message_id: str
    text: str  # text/plain parts, decoded
    html_text: str  # text/html parts, tags stripped
    link_domains: tuple[str, ...]  # of the first MAX_LINK_DOMAINS links
    links: int  # how many links the message has
    content_types: tuple[str, ...]
    charsets: tuple[str, ...]
    attachments: int
    size: int
    defects: tuple[str, ...] = field(default=())

    @property
    def html_only(self) -> bool:
        return bool(self.html_text) and not self.text.strip()


def parse(raw: bytes) -> ParsedMail:
    """Parse raw message bytes leniently; never raises on any input.

    A message the stdlib's parser cannot take (it raises, or recurses too deep), or whose MIME
    structure would keep it busy for seconds, is read flat (`_flat`): a message that failed to
    parse used to pass unscored, as Unknown, which made any such message a way past spamd.
    """
    # Read with LF line endings: mail arrives by SMTP with CRLF and is kept on disk (a Maildir, a
    # corpus, the mailboxes users label from) with LF, and a model must read both alike (the size
    # marker, where the cuts fall), or live mail scores against what it never trained on.
    raw = with_lf(strip_spam_headers(raw))
    try:
        return _structured(raw)
    except Exception:  # noqa: BLE001 - RecursionError, a codec's own error, _TooComplex...: read it flat
        return _flat(raw)


def _structured(raw: bytes) -> ParsedMail:
    size = len(raw)
    msg = _message(raw[:MAX_PARSE_BYTES])
    headers = tuple((str(k), _decode_header(v)) for k, v in msg.items())
    texts: list[str] = []
    htmls: list[str] = []
    links: list[str] = []
    ctypes: list[str] = []
    charsets: list[str] = []
    attachments = 0
    for n, part in enumerate(msg.walk()):
        if n >= MAX_PARTS:
            break
        ctype = part.get_content_type()
        ctypes.append(ctype)
        if part.is_multipart():
            continue
        if ctype.split("/")[0] not in ("text", "message") or _has_filename(part):
            attachments += 1
            continue
        charset = _charset(part)
        if charset:
            charsets.append(charset)
        body = _decode_payload(part, charset)
        if ctype == "text/html":
            links.extend(html_links(body))
            htmls.append(html_to_text(body))
        else:
            texts.append(body)
    text, html_text = "\n".join(texts), "\n".join(htmls)
    links.extend(_URL.findall(text))
    return _mail(headers, text, html_text, links, size, tuple(ctypes), tuple(charsets), attachments,
                 tuple(type(d).__name__ for d in msg.defects))


def _mail(headers: tuple[tuple[str, str], ...], text: str, html_text: str, links: list[str], size: int,
          content_types: tuple[str, ...] = (), charsets: tuple[str, ...] = (), attachments: int = 0,
          defects: tuple[str, ...] = ()) -> ParsedMail:
    """A ParsedMail from what was read; the fields that follow from the headers and links are derived here."""
    from_name, from_domain = _split_from(_get(headers, "from"))
    return ParsedMail(
        headers=headers,
        subject=_get(headers, "subject"),
        from_name=from_name,
        from_domain=from_domain,
        message_id=_get(headers, "message-id").strip(),
        text=text,
        html_text=html_text,
        link_domains=tuple(_link_domain(u) for u in links[:MAX_LINK_DOMAINS]),
        links=len(links),
        content_types=content_types,
        charsets=charsets,
        attachments=attachments,
        size=size,
        defects=defects,
    )


class _TooComplex(Exception):
    """More MIME structure than the stdlib's parser reads in reasonable time (`_message`)."""


def _flat(raw: bytes) -> ParsedMail:
    """The message without its MIME structure: the top header block (its over-long fields cut, as
    `_guard` cuts them) and all that follows it as one text, as UTF-8 where it decodes. Never raises."""
    block, rest = split_header_block(raw[:MAX_PARSE_BYTES])
    if raw.startswith((b"\n", b"\r\n")):  # no header block at all
        block, rest = b"", raw[:MAX_PARSE_BYTES]
    try:
        head = email.message_from_bytes(_guard(block), policy=policy.compat32)
        headers = tuple((str(k), _decode_header(v)) for k, v in head.items())
    except Exception:  # noqa: BLE001 - no header is read, the text still is
        headers = ()
    # Without the MIME scaffolding (boundary lines, part headers, empty lines): the text a reader
    # sees comes within the cut, however much structure was piled up in front of it.
    text = _to_text(_SCAFFOLDING.sub(b"", rest)[: MAX_PART_CHARS * 2], "utf-8")[:MAX_PART_CHARS]
    return _mail(headers, text, "", _URL.findall(text), len(raw))


def _has_filename(part: Message) -> bool:
    """Whether the part names a file (`Message.get_filename`, guarded): the stdlib's parameter parser
    is quadratic on a long field with an open quote (seconds on a part header of 120 kB), and raises
    on a broken RFC 2231 value (`name*=idna''x`), which does name a file."""
    fields = [str(part.get(name, "")) for name in ("content-disposition", "content-type")]
    if any(len(f) > MAX_FIELD_BYTES for f in fields):
        return any(_FILENAME.search(f[:MAX_FIELD_BYTES]) for f in fields)
    try:
        return bool(part.get_filename())
    except (LookupError, UnicodeError, ValueError):
        return True


def _message(raw: bytes) -> Message:
    """The stdlib's message tree, as `email.message_from_bytes` builds it (after `_guard`
    has cut the header block's over-long fields).

    The stdlib's parser reads a body line by line in Python, which is most of the time spent
    on a large single-part message (an HTML newsletter). Such a message is built from its
    header block alone, with the body set as its payload in one piece: the same tree, for a
    fraction of the time. Multipart and message/* bodies have structure: those the stdlib parses.
    """
    block, rest = split_header_block(raw)
    block = _guard(block)
    if not rest or raw.startswith((b"\n", b"\r\n")):  # no empty line, or no headers
        _check_structure(block + rest)
        return email.message_from_bytes(block + rest, policy=policy.compat32)
    head = email.message_from_bytes(block, policy=policy.compat32)
    if head.get_payload() or head.get_content_maintype() in ("multipart", "message"):
        _check_structure(rest)
        return email.message_from_bytes(block + rest, policy=policy.compat32)  # structure, or a malformed block
    body = rest[2:] if rest.startswith(b"\r\n") else rest[1:]  # after the empty line
    head.set_payload(body.decode("ascii", "surrogateescape"))
    return head


def _check_structure(body: bytes) -> None:
    """Raise _TooComplex for a body with more MIME structure than mail has. The stdlib's parser
    reads it line by line in Python, testing each line against every enclosing boundary, and
    recurses for each nested part: 700 nested multiparts over 100,000 lines took 5.2 s, 2,000 a
    RecursionError, 100,000 empty parts 0.8 s. Counted with `bytes.count`, which costs next to
    nothing: lines, lines that may open a part ("--"), boundaries declared, MIME fields."""
    lines = body.count(b"\n")
    boundaries = 1 + body.count(b"oundary=") + body.count(b"OUNDARY=")
    if (lines > MAX_LINES or lines * boundaries > MAX_BOUNDARY_TESTS or body.count(b"\n--") > MAX_PART_MARKERS
            or body.count(b"ontent-") + body.count(b"ONTENT-") > MAX_MIME_FIELDS):
        raise _TooComplex


def _guard(block: bytes) -> bytes:
    """A header block with over-long fields truncated, and no more than MAX_FIELDS fields, so the
    stdlib parser stays fast on hostile input (100,000 tiny fields took it 0.3 s)."""
    if block.count(b"\n") > 4 * MAX_FIELDS:  # splitting it all would cost more than the stdlib saves
        block = block[: _nth(block, b"\n", 4 * MAX_FIELDS) + 1]
    fields = header_fields(block)[:MAX_FIELDS]
    if all(len(f) <= MAX_FIELD_BYTES for f in fields) and len(fields) < MAX_FIELDS:
        return block
    eol = b"\r\n" if block.endswith(b"\r\n") else b"\n"
    return b"".join(f if len(f) <= MAX_FIELD_BYTES else f[:MAX_FIELD_BYTES].rstrip() + eol for f in fields)


def _nth(data: bytes, sub: bytes, n: int) -> int:
    """Where the n-th occurrence of `sub` in `data` is (it has at least n)."""
    at = -1
    for _ in range(n):
        at = data.find(sub, at + 1)
    return at


def _get(headers: tuple[tuple[str, str], ...], name: str) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value
    return ""


def _decode_header(value: object) -> str:
    """RFC 2047 decoding that tolerates unknown charsets and broken encodings."""
    text = str(value)
    if "=?" not in text:
        return text
    try:
        chunks = email.header.decode_header(text)
    except Exception:  # noqa: BLE001 - any malformed header is read as it is
        return text
    out = []
    for chunk, cs in chunks:
        if isinstance(chunk, bytes):
            out.append(_to_text(chunk, cs))
        else:
            out.append(chunk)
    return "".join(out)


def _charset(part: Message) -> str:
    """The part's charset, read by regex: `get_content_charset` is slow on hostile headers."""
    m = _CHARSET.search(str(part.get("content-type", ""))[:MAX_FIELD_BYTES])
    return m.group(1).lower() if m else ""


def _decode_payload(part: Message, charset: str) -> str:
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - undecodable transfer encoding: read nothing of it
        return ""
    if not isinstance(payload, bytes):
        return ""
    return _to_text(payload[: MAX_PART_CHARS * 2], charset)[:MAX_PART_CHARS]


def _to_text(data: bytes, charset: str | None) -> str:
    for cs in (charset, "utf-8"):
        if not cs:
            continue
        try:
            if codecs.lookup(cs).name in _REFUSED_CODECS:
                continue
            return data.decode(cs)
        except (LookupError, UnicodeError, ValueError):
            continue
    return data.decode("latin-1")


def _split_from(value: str) -> tuple[str, str]:
    name, _, addr = value.rpartition("<")
    m = _ADDR_DOMAIN.search(addr or value)
    domain = m.group(1).lower().rstrip(".>") if m else ""
    return name.strip().strip('"').strip(), domain


def _link_domain(url: str) -> str:
    host = _URL_SCHEME.sub("", url)
    host = _URL_PATH.split(host, maxsplit=1)[0].lower()
    return host.removeprefix("www.")
