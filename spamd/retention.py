"""Which model versions to keep when pruning: a decision over the registry's rows, with no I/O.

Never pruned, whatever `keep` says:

    active             the version every daemon serves
    rollback target    the version `spamd models rollback` would go back to
    starter            the oldest version that was ever active (and is not pruned): the one the
                       registry was seeded with from models/ACTIVE, i.e. the starter models shipped
                       in models/, older than anything trained from them. Rollback's chain ends
                       there, and it is the general-corpus model a site can always go back to.
    recently active    active at some time in the last RECENT: a daemon that read the registry
                       just before it changed may still be copying or loading that version
    this host's ACTIVE the version named by this host's models/ACTIVE, which its daemons serve
                       when the database cannot be reached

Of the others, `keep` are kept: once-active versions (further steps back) before candidates
that were never activated (rejected by the gate: nothing uses them again but a person
inspecting one), newest first. The rest are pruned; a version pruned before stays so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

# A daemon notices a change within [training] poll_interval (10 s) and copies and loads a version in
# seconds; an hour is a wide margin, and costs at most one version kept an hour longer.
RECENT = timedelta(hours=1)


@dataclass(frozen=True)
class Entry:
    """What the decision needs of one registry row."""

    version: str
    status: str  # candidate, active, retired, pruned
    created: datetime
    activated: datetime | None  # the last time it became active; None: never


@dataclass(frozen=True)
class Plan:
    keep: dict[str, str]  # version → why it stays, newest first
    prune: list[str]  # never-active candidates first, then once-active versions; oldest first in each


def plan(entries: list[Entry], keep: int, now: datetime, rollback: str | None = None,
         host_active: str | None = None) -> Plan:
    """Which versions stay and which are pruned, keeping `keep` besides the protected ones (0: all)."""
    live = sorted((e for e in entries if e.status != "pruned"), key=lambda e: e.created, reverse=True)
    ever = [e for e in entries if e.activated is not None]
    ends = [e for e in live if e.activated is not None]  # rollback's chain, which ends at the starter
    starter = min(ends, key=lambda e: e.created).version if ends else None
    why: dict[str, str] = {}
    for e in live:
        reasons = [
            "active" if e.status == "active" else "",
            "rollback target" if e.version == rollback else "",
            "starter" if e.version == starter else "",
            "active in the last hour" if e.status != "active" and _recently_active(e, ever, now - RECENT) else "",
            "this host's models/ACTIVE" if e.version == host_active else "",
        ]
        if any(reasons):
            why[e.version] = ", ".join(r for r in reasons if r)
    rest = sorted((e for e in live if e.version not in why), key=lambda e: (e.activated is not None, e.created),
                  reverse=True)
    kept = rest[:keep] if keep > 0 else rest
    for e in kept:
        why[e.version] = f"one of the {keep} kept" if keep > 0 else "keeping every version"
    return Plan({e.version: why[e.version] for e in live if e.version in why},
                [e.version for e in reversed(rest) if e.version not in why])


def _recently_active(e: Entry, ever: list[Entry], since: datetime) -> bool:
    """Whether `e` may have been the active version after `since` (`ever`: the versions ever active).

    Only each version's last activation is recorded. `e` stopped being active at the first
    activation after its own, which is no later than the earliest one recorded after it: when
    that one is before `since`, so was the end of `e`'s time as the active version.
    """
    if e.activated is None:
        return False
    later = [x.activated for x in ever if x.activated is not None and x.activated > e.activated]
    return not later or min(later) > since
