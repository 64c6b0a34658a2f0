"""HTML → readable text and the link targets in it, by regular expressions (fast, never raises)."""

from __future__ import annotations

import html
import re
from collections.abc import Callable

# Elements whose text is never shown: `<(script|style|head|title)\b.*?</\1\s*>` (any case, across
# lines), found an opening tag at a time by `_strip_invisible`.
_INVISIBLE_OPEN = re.compile(r"<(script|style|head|title)\b", re.IGNORECASE)
_INVISIBLE_CLOSE = {name: re.compile(rf"</{name}\s*>", re.IGNORECASE) for name in ("script", "style", "head", "title")}
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_BLOCK = re.compile(r"<\s*(br|p|div|tr|li|h\d)\b[^>]*>", re.IGNORECASE)
TAG_LIMIT = 2000  # characters a tag may hold between its "<" and ">"
_TAG = re.compile(rf"<[^>]{{0,{TAG_LIMIT}}}>")
_UNCLOSED_TAG = re.compile(rf"<[^>]{{{TAG_LIMIT + 1}}}")  # a "<" with no ">" soon after: _TAG slows down
# `(?:href|src)\s*=\s*["']?([^"'\s>]{1,500})` case-insensitively ("ſ" folds to "s"), spelled to
# begin with one character class so the regex engine skips to candidate letters (3x faster on
# the test messages' HTML, timed by hand).
_HREF = re.compile(r"""[hHsSſ](?:(?<=[hH])[rR][eE][fF]|(?<=[sSſ])[rR][cC])\s*=\s*["']?([^"'\s>]{1,500})""")


def html_to_text(markup: str) -> str:
    """Strip tags, scripts, styles and comments; decode entities leniently.

    In time linear in the markup, whatever it holds: a regular expression tries each place a
    construct opens, and for one never closed it read on to the end of the text, every time
    (seconds on a part of 64 Ki characters of "<!--", "<title>" or "<p"). So a comment or a block
    tag is looked for only before the last "-->" or ">" (after it, none can be closed), and an
    unclosed script, style, head or title is given up once (`_strip_invisible`). The text is what
    the regular expressions alone gave.
    """
    text = _before(markup, "-->", lambda head: _COMMENT.sub(" ", head))
    text = _strip_invisible(text)
    text = _before(text, ">", lambda head: _BLOCK.sub("\n", head))
    text = _TAG.sub(" ", text) if _UNCLOSED_TAG.search(text) is None else tags_by_segment(text)
    return html.unescape(text)


def tags_by_segment(text: str, limit: int = TAG_LIMIT) -> str:
    """`<[^>]{0,limit}>` replaced by a space, in linear time. The regular expression reads up to
    `limit` characters after every "<" that opens no tag (64 Ki characters of "<!--" took it 22 ms).
    Between two ">", a tag can only end at the second one, and it begins at the first "<" at most
    `limit` characters before it."""
    pieces = text.split(">")
    out = []
    for piece in pieces[:-1]:
        start = piece.find("<", max(0, len(piece) - limit - 1))
        out.append(piece + ">" if start < 0 else piece[:start] + " ")
    out.append(pieces[-1])
    return "".join(out)


def _before(text: str, closer: str, sub: Callable[[str], str]) -> str:
    """`sub` applied to the text up to the last `closer`; the rest as it is."""
    end = text.rfind(closer)
    if end < 0:
        return text
    end += len(closer)
    return sub(text[:end]) + text[end:]


def _strip_invisible(text: str) -> str:
    out: list[str] = []
    done = pos = 0
    unclosed: set[str] = set()  # closing tags that do not occur after some point, hence after any later one
    while (m := _INVISIBLE_OPEN.search(text, pos)) is not None:
        name = m.group(1).casefold()  # "ſcript" too, as the regex's IGNORECASE reads it
        close = None if name in unclosed else _INVISIBLE_CLOSE[name].search(text, m.end())
        if close is None:
            unclosed.add(name)
            pos = m.end()
            continue
        out += [text[done : m.start()], " "]
        done = pos = close.end()
    out.append(text[done:])
    return "".join(out)


def html_links(markup: str) -> list[str]:
    """The href/src targets of an HTML document, in order."""
    return _HREF.findall(markup)
