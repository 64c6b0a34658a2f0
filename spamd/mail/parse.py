"""Raw bytes → ParsedMail: the readable parts of a message, guarded in size and time.

Parsing never raises: whatever cannot be read is skipped, and the message is scored
on the rest. Limits keep any message under a few milliseconds: the header block is
cleaned of over-long fields before the stdlib parser sees it (one corpus message has a
Content-Type with thousands of empty parameters that takes seconds in email.policy),
only the first `max_bytes` of a message are parsed, and text per part is capped.
"""

from __future__ import annotations

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

# A link in text: `(?:https?://|www\.)[\w.-]{1,200}` case-insensitively (where "ſ" folds to
# "s"), spelled to begin with one character class: the regex engine then skips from candidate
# letter to candidate letter instead of trying both branches at every position (3x faster
# on the test messages' text, timed by hand).
_URL = re.compile(r"[hHwW](?:(?<=[hH])[tT]{2}[pP][sSſ]?://|(?<=[wW])[wW]{2}\.)[\w.-]{1,200}")
_CHARSET = re.compile(r"""charset\s*=\s*"?([\w.:-]{1,40})""", re.IGNORECASE)
_ADDR_DOMAIN = re.compile(r"@([\w.-]+)")
_URL_SCHEME = re.compile(r"^(?:https?://|www\.)", re.IGNORECASE)
_URL_PATH = re.compile(r"[/?#:]")


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
    """Parse raw message bytes leniently; never raises on any input."""
    # Read with LF line endings: mail arrives by SMTP with CRLF and is kept on disk (a Maildir, a
    # corpus, the mailboxes users label from) with LF, and a model must read both alike (the size
    # marker, where the cuts fall), or live mail scores against what it never trained on.
    raw = with_lf(strip_spam_headers(raw))
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
        if part.get_filename() or ctype.split("/")[0] not in ("text", "message"):
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
        content_types=tuple(ctypes),
        charsets=tuple(charsets),
        attachments=attachments,
        size=size,
        defects=tuple(type(d).__name__ for d in msg.defects),
    )


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
        return email.message_from_bytes(block + rest, policy=policy.compat32)
    head = email.message_from_bytes(block, policy=policy.compat32)
    if head.get_payload() or head.get_content_maintype() in ("multipart", "message"):
        return email.message_from_bytes(block + rest, policy=policy.compat32)  # structure, or a malformed block
    body = rest[2:] if rest.startswith(b"\r\n") else rest[1:]  # after the empty line
    head.set_payload(body.decode("ascii", "surrogateescape"))
    return head


def _guard(block: bytes) -> bytes:
    """A header block with over-long fields truncated, so the stdlib parser stays fast on hostile input."""
    fields = header_fields(block)
    if all(len(f) <= MAX_FIELD_BYTES for f in fields):
        return block
    eol = b"\r\n" if block.endswith(b"\r\n") else b"\n"
    return b"".join(f if len(f) <= MAX_FIELD_BYTES else f[:MAX_FIELD_BYTES].rstrip() + eol for f in fields)


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
            return data.decode(cs)
        except (LookupError, UnicodeDecodeError, ValueError):
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
