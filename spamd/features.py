"""ParsedMail → the token strings and hashed token ids the models read.

The token space is hashed (crc32 modulo `buckets`), so it never changes across
retrains and a new model can start from the active model's weights. The layout of
a message's token sequence is: cheap markers, then header tokens (each prefixed with
a short tag for its header, capped in number), then subject, then the body text.
The CNN reads the first `cnn_window` ids; the RNN reads further.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from spamd.mail.parse import ParsedMail

_WORD = re.compile(r"[^\W_]{1,40}(?:['.\-$][^\W_]{1,40})*|[$€£!%]", re.UNICODE)
_DIGITS = re.compile(r"\d")
_CHARS_PER_WORD = 12  # a first guess of text per word, for reading a prefix of a long text

# Headers whose values carry signal, and the tag their tokens get. Every other header
# contributes only its name ("hdr:x-mailer"): which headers a mailer writes is itself a tell.
_HEADER_TAGS = {
    "from": "from",
    "reply-to": "rpto",
    "return-path": "rpath",
    "to": "to",
    "cc": "to",
    "received": "rcvd",
    "message-id": "mid",
    "x-mailer": "xm",
    "user-agent": "xm",
    "content-type": "ct",
    "content-transfer-encoding": "cte",
    "mime-version": "mime",
    "date": "date",
    "precedence": "prec",
    "list-id": "list",
    "list-unsubscribe": "list",
    "x-priority": "prio",
    "x-msmail-priority": "prio",
    "importance": "prio",
    "organization": "org",
}


@dataclass(frozen=True)
class TokenizerConfig:
    """Tokenizer settings; stored with every model so scoring reads text as training did."""

    buckets: int = 1 << 20  # hashed token space; each model folds it into its own table
    max_tokens: int = 2000
    max_header_tokens: int = 160
    max_tokens_per_header: int = 24
    # Read no header that the final delivery writes (`delivery_fields`). A manifest without this
    # key (models trained before it) reads them, as those models were trained: modelstore.py.
    skip_delivery_headers: bool = True

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)


def tokens(mail: ParsedMail, cfg: TokenizerConfig) -> list[str]:
    """The token strings of a message, in model order, at most `cfg.max_tokens`."""
    out = _markers(mail)
    out += _header_tokens(mail, cfg)
    out += ["subj:" + w for w in _words(mail.subject)]
    if mail.from_name:
        out += ["fname:" + w for w in _words(mail.from_name)]
    out.append("<body>")
    budget = cfg.max_tokens - len(out)
    body = _words(mail.text, budget)
    if len(body) < budget:
        body += _words(mail.html_text, budget - len(body))
    out += body
    return out[: cfg.max_tokens]


def token_ids(mail: ParsedMail, cfg: TokenizerConfig) -> list[int]:
    """Hashed ids in [1, buckets); 0 is padding."""
    n = cfg.buckets - 1
    return [zlib.crc32(t.encode("utf-8", "replace")) % n + 1 for t in tokens(mail, cfg)]


def _words(text: str, limit: int = 10_000) -> list[str]:
    """The first `limit` words of `text`, lower-cased; long numbers become their shape."""
    words = _first_words(text, limit)
    # Long numbers are noise individually but their shape is signal (phone, price, id).
    return [_DIGITS.sub("9", w) if len(w) > 4 and w[0].isdigit() else w for w in words]


def _first_words(text: str, limit: int) -> list[str]:
    # Reading a long body whole to keep 400 words of it is most of a message's tokenizing
    # time, so read a prefix first. Only the prefix's last match can be cut short by the cut,
    # so when the prefix yields more than `limit` words, the first `limit` are exact.
    if limit <= 0:
        return []
    cut = limit * _CHARS_PER_WORD
    while cut < len(text):
        words = _WORD.findall(text[:cut].lower())
        if len(words) > limit:
            return words[:limit]
        cut *= 4
    return _WORD.findall(text.lower())[:limit]


def _markers(mail: ParsedMail) -> list[str]:
    out = [
        f"size:{_bucket(mail.size)}",
        f"links:{_bucket(mail.links)}",
        f"attach:{min(mail.attachments, 5)}",
    ]
    if mail.html_only:
        out.append("html-only")
    out += ["ctype:" + c for c in mail.content_types[:6]]
    out += ["charset:" + c for c in mail.charsets[:3]]
    out += ["url:" + d for d in dict.fromkeys(mail.link_domains[:20])]
    out += ["defect:" + d for d in mail.defects[:3]]
    if mail.from_domain:
        out.append("fromdom:" + mail.from_domain)
    return out


# What the final delivery writes on top of a message, after spamd has scored it: Return-Path,
# Delivered-To, X-Original-To, and Received lines of hops from or to this host by its loopback
# name or address (a reinjection, a local LMTP, fetchmail's "by localhost with IMAP"). spamd, in
# front of the MTA, never sees them; delivered mail has them (a corpus, the mailboxes users label
# from). A model that learns them leans on what live mail lacks: the starter, which read them,
# ranks the SPLIT test rows almost three times worse without them (README, "Accuracy").
_DELIVERY_FIELDS = frozenset({"return-path", "delivered-to", "x-original-to"})
_LOOPBACK = re.compile(r"\[(?:127\.[\d.]+|::1|IPv6:::1)\]|^\s*from\s+localhost\b", re.IGNORECASE)
_BY = re.compile(r"\sby\s", re.IGNORECASE)
_BY_LOCALHOST = re.compile(r"\sby\s+localhost\b", re.IGNORECASE)


def delivery_fields(headers: Sequence[tuple[str, str]]) -> int:
    """How many header fields at the top were written by the final delivery (see above)."""
    for n, (name, value) in enumerate(headers):
        key = name.lower()
        if key in _DELIVERY_FIELDS:
            continue
        if key == "received" and (_LOOPBACK.search(_BY.split(value, 1)[0]) or _BY_LOCALHOST.search(value)):
            continue
        return n
    return len(headers)


def _header_tokens(mail: ParsedMail, cfg: TokenizerConfig) -> list[str]:
    out: list[str] = []
    headers = mail.headers[delivery_fields(mail.headers):] if cfg.skip_delivery_headers else mail.headers
    for name, value in headers:
        key = name.lower()
        out.append("hdr:" + key[:40])
        tag = _HEADER_TAGS.get(key)
        if tag == "rcvd":
            # Of a Received line only the hosts and addresses say where mail came from.
            hops = [w for w in _words(value[:2000]) if "." in w][:8]
            out += [f"rcvd:{w}" for w in hops]
        elif tag is not None:
            out += [f"{tag}:{w}" for w in _words(value[:2000], cfg.max_tokens_per_header)]
        if len(out) >= cfg.max_header_tokens:
            break
    return out[: cfg.max_header_tokens]


def _bucket(n: int) -> int:
    """Logarithmic bucket of a count, so sizes become a handful of tokens."""
    return n.bit_length()
