"""HTML → readable text and the link targets in it, by regular expressions (fast, never raises)."""

from __future__ import annotations

import html
import re

_INVISIBLE = re.compile(r"<(script|style|head|title)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_BLOCK = re.compile(r"<\s*(br|p|div|tr|li|h\d)\b[^>]*>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]{0,2000}>")
_HREF = re.compile(r"""(?:href|src)\s*=\s*["']?([^"'\s>]{1,500})""", re.IGNORECASE)


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
