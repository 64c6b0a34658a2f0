"""The labelled-mail repository: keys without X-Spam-* headers, add / relabel / unchanged, forget, counts."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from spamd.db import labels
from spamd.db.labels import Labelling
from spamd.features import TokenizerConfig
from spamd.retrain.data import sample_of
from tests.fixtures_models import fixture_mail

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SPAM_ID = "0190f00000001234abcd"


def tagged(raw: bytes) -> bytes:
    return f"X-Spam-Flag: YES\nX-Spam-Id: {SPAM_ID}\nX-Spam-Score: 0.97\n".encode() + raw


def how(label: str, user: str = "alice", when: datetime = NOW) -> Labelling:
    return Labelling(label, user, "cli", when)


def test_the_key_ignores_spamds_own_headers_and_keeps_the_score_log_id() -> None:
    raw = fixture_mail("train", "spam")[0]
    plain, marked = labels.prepare(raw), labels.prepare(tagged(raw))
    assert plain.sha256 == marked.sha256 == hashlib.sha256(plain.raw).hexdigest()
    assert marked.raw == plain.raw and b"X-Spam-" not in marked.raw
    assert (plain.score_log_id, marked.score_log_id) == (None, SPAM_ID)
    assert marked.subject and marked.message_id.startswith("<")


def test_a_delivered_copy_is_learnt_as_spamd_scored_it() -> None:
    # A mailbox's copy has the final delivery's fields above spamd's block (Return-Path,
    # Delivered-To, the reinjection's Received): they go with the block, so bob's and carol's copies
    # of one message are one labelled message, stored as the bytes spamd scored.
    raw = fixture_mail("train", "ham")[0]
    copies = [(f"Return-Path: <a@example.org>\nDelivered-To: {user}@example.net\n"
               "Received: from localhost (localhost [127.0.0.1])\n\tby mx.example.net (Postfix)\n").encode()
              + tagged(raw) for user in ("bob", "carol")]
    bob, carol = (labels.prepare(c) for c in copies)
    assert bob.raw == carol.raw == labels.prepare(raw).raw and bob.sha256 == carol.sha256
    assert bob.score_log_id == SPAM_ID
    # without spamd's block (no X-Spam-Id) nothing but X-Spam-* fields is taken away
    forged = b"Delivered-To: bob@example.net\nX-Spam-Flag: NO\n" + raw
    assert labels.prepare(forged).raw == b"Delivered-To: bob@example.net\n" + raw
    # `spamd train` and the starter corpus read files the same way, keyed as labels are
    tok = TokenizerConfig()
    assert sample_of(copies[0], 1, tok) == sample_of(raw, 1, tok)
    assert sample_of(copies[1], 1, tok).key == bob.sha256


def test_copies_with_crlf_and_with_lf_are_one_message_kept_with_lf() -> None:
    # A copy kept with the wire's CRLF (a client piping it, a Maildir written before spamd wrote LF)
    # and one kept with LF are one labelled message, so a retrain's holdout cannot hold one and
    # train on the other.
    unix = tagged(fixture_mail("train", "spam")[1]).replace(b"\r\n", b"\n")
    wire = unix.replace(b"\n", b"\r\n")
    a, b = labels.prepare(unix), labels.prepare(wire)
    assert a.sha256 == b.sha256 == hashlib.sha256(b.raw).hexdigest() and b.raw == a.raw
    assert b"\r\n" not in b.raw and b.score_log_id == SPAM_ID
    tok = TokenizerConfig()
    assert sample_of(wire, 1, tok) == sample_of(unix, 1, tok) and sample_of(wire, 1, tok).key == a.sha256


def test_add_then_same_label_is_unchanged_then_other_label_relabels(engine: Engine) -> None:
    items = [labels.prepare(raw) for raw in fixture_mail("train", "spam")[:3]]
    with Session(engine) as s, s.begin():
        assert set(labels.apply_labels(s, items, how("spam")).values()) == {"added"}
    with Session(engine) as s, s.begin():
        assert set(labels.apply_labels(s, items, how("spam", "bob")).values()) == {"unchanged"}
    later = NOW + timedelta(hours=1)
    with Session(engine) as s, s.begin():
        assert labels.apply_labels(s, items[:1], how("ham", "carol", later)) == {items[0].sha256: "relabelled"}
    with Session(engine) as s:
        assert labels.counts(s) == [("ham", "carol", "cli", 1), ("spam", "alice", "cli", 2)]
        assert labels.count_since(s, NOW) == 1 and labels.count_since(s, None) == 3


def test_forget_removes_only_what_was_labelled(engine: Engine) -> None:
    ham = [labels.prepare(raw) for raw in fixture_mail("train", "ham")[:2]]
    with Session(engine) as s, s.begin():
        labels.apply_labels(s, ham[:1], how("ham"))
    with Session(engine) as s, s.begin():
        assert labels.forget(s, [i.sha256 for i in ham]) == {ham[0].sha256}
    with Session(engine) as s:
        assert labels.counts(s) == []


def test_stored_bytes_come_back_intact_for_training(engine: Engine) -> None:
    raws = fixture_mail("train", "ham")[:5] + fixture_mail("malformed", "")[:3]
    items = [labels.prepare(tagged(raw)) for raw in raws]
    with Session(engine) as s, s.begin():
        labels.apply_labels(s, items, how("ham"))
    with Session(engine) as s:
        back = list(labels.iter_labelled(s, batch=3))
    assert sorted(back) == sorted((i.sha256, "ham", i.raw) for i in items)
    assert all(hashlib.sha256(raw).hexdigest() == sha for sha, _, raw in back)
