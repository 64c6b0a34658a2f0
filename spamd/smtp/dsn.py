"""DSN (RFC 3461) through the filter: RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT, passed on.

An MTA asks for delivery status notifications per message and per recipient. A filter that
does not offer DSN loses those requests at its hop: Postfix then reports "relayed" to a
sender who asked for success notices, and the next MTA bounces to a sender who asked for
none (NOTIFY=NEVER) or returns a whole message where only headers were wanted (RET=HDRS).
spamd offers DSN and hands the parameters, exactly as given, to a downstream that offers it.

aiosmtpd 1.4 refuses parameters it does not know (555) and upper-cases those it keeps, which
would change an ENVID or an ORCPT address. So the protocol takes the DSN parameters out of the
command line as they came (`take`), checks them (`check`), and lets aiosmtpd parse the rest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MAIL = ("RET", "ENVID")
RCPT = ("NOTIFY", "ORCPT")
_NOTIFY = {"SUCCESS", "FAILURE", "DELAY"}
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})+")  # RFC 3461 4: printable ASCII but "+" and "=", or +XX
# addr-type;address: xtext (RFC 3461), or UTF-8 (RFC 6533); never a control character
_ORCPT = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*;[^\x00-\x1f\x7f]+")


def take(arg: str, names: Sequence[str]) -> tuple[str, list[str]]:
    """A MAIL or RCPT argument without the parameters `names`, and those parameters as given."""
    address, *rest = arg.split(" ")
    taken = [w for w in rest if "=" in w and w.partition("=")[0].upper() in names]
    return " ".join([address, *(w for w in rest if w not in taken)]), taken


def check(params: Sequence[str]) -> str:
    """What is wrong with these DSN parameters ("" when nothing is)."""
    seen: set[str] = set()
    for param in params:
        name, _, value = param.partition("=")
        name = name.upper()
        if name in seen:
            return f"{name} given twice"
        seen.add(name)
        if name == "RET" and value.upper() not in ("FULL", "HDRS"):
            return "RET takes FULL or HDRS"
        if name == "ENVID" and (len(value) > 100 or not _XTEXT.fullmatch(value)):
            return "ENVID takes up to 100 characters of xtext"
        if name == "NOTIFY":
            kinds = value.upper().split(",")
            if kinds != ["NEVER"] and not (kinds and set(kinds) <= _NOTIFY and len(set(kinds)) == len(kinds)):
                return "NOTIFY takes NEVER, or SUCCESS, FAILURE and DELAY separated by commas"
        if name == "ORCPT" and (len(value) > 500 or not _ORCPT.fullmatch(value)):
            return "ORCPT takes addr-type;address"
    return ""
