"""HTML → readable text and the link targets in it, by regular expressions (fast, never raises)."""

from __future__ import annotations

import html
import re

_INVISIBLE = re.compile(r"<(script|style|head|title)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_BLOCK = re.compile(r"<\s*(br|p|div|tr|li|h\d)\b[^>]*>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]{0,2000}>")
# `(?:href|src)\s*=\s*["']?([^"'\s>]{1,500})` case-insensitively ("ſ" folds to "s"), spelled to
# begin with one character class so the regex engine skips to candidate letters (3x faster on
# the test messages' HTML, timed by hand).
_HREF = re.compile(r"""[hHsSſ](?:(?<=[hH])[rR][eE][fF]|(?<=[sSſ])[rR][cC])\s*=\s*["']?([^"'\s>]{1,500})""")


def html_to_text(markup: str) -> str:
    """Strip tags, scripts, styles and comments; decode entities leniently."""
    text = _COMMENT.sub(" ", markup)
    text = _INVISIBLE.sub(" ", text)
    text = _BLOCK.sub("\n", text)
    text = _TAG.sub(" ", text)
    return html.unescape(text)


def html_links(markup: str) -> list[str]:
    """The href/src targets of an HTML document, in order."""
    return _HREF.findall(markup)
