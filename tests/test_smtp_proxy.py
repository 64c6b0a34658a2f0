"""The proxy end to end on loopback: client → spamd → capturing downstream; verdict headers and actions."""

from __future__ import annotations

import errno
import re
import shutil
import smtplib
import socket
import time
from dataclasses import replace
from email import message_from_bytes
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from spamd.db import labels
from spamd.errors import ConfigError
from spamd.mail.headers import as_learned
from spamd.scorer import Scorer, ScoringPolicy
from spamd.smtp import maildir
from spamd.smtp.actions import received_line, with_protocol
from spamd.smtp.forward import open_downstream
from spamd.smtp.server import listen_socket
from tests.fixtures_models import DATA, TrainedTiny, fixture_mail
from tests.fixtures_smtp import past_received, proxy_config, send


def crlf(raw: bytes) -> bytes:
    """A fixture message with the CRLF line ends it has on the wire (smtplib sends bytes as given)."""
    return re.sub(rb"\r?\n", b"\r\n", raw)


def lf(raw: bytes) -> bytes:
    """A message as a delivery agent keeps it on disk (the Maildir), each line ending in LF."""
    return raw.replace(b"\r\n", b"\n")


def _in_maildir(box: Path) -> list[bytes]:
    """The messages in the Maildir `box` as spamd passed them on, after the headers it added."""
    return sorted(f.read_bytes().split(b"X-Spam-Id: ")[1].split(b"\n", 1)[1] for f in (box / "new").iterdir())


def _below_envelope(content: bytes) -> bytes:
    """A Maildir message without the envelope fields the delivery wrote on top."""
    return re.sub(rb"\A(?:(?:Return-Path|Delivered-To): [^\n]*\n)+", b"", content)


def _headers(content: bytes) -> dict[str, str]:
    msg = message_from_bytes(content)
    return {k: str(v) for k, v in msg.items() if k.lower().startswith("x-spam-")}


def test_spam_and_ham_get_the_scorers_verdict_in_headers(tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    scorer = Scorer(tiny_trained.load(), ScoringPolicy())
    mails = [(label, crlf(raw)) for label in ("spam", "ham") for raw in fixture_mail("train", label)[:6]]
    for _, raw in mails:
        assert send(p.port, raw) == {}
    got = down.wait_for(len(mails))
    assert len(got) == len(mails)
    flags = {"spam": [], "ham": []}
    # Scored one by one as the proxy did (sequential sends): the RNN's score moves ~1e-4 with batch padding.
    expected_verdicts = [scorer.score([raw])[0] for _, raw in mails]
    for (label, raw), item, expected in zip(mails, got, expected_verdicts, strict=True):
        h = _headers(item.content)
        assert h["X-Spam-Flag"] == ("YES" if expected.is_spam else "NO")
        assert float(h["X-Spam-Score"]) == pytest.approx(expected.score, abs=1e-3)
        assert h["X-Spam-Status"].startswith("Yes, " if expected.is_spam else "No, ")
        assert f"model={tiny_trained.version}" in h["X-Spam-Status"]
        assert re.search(r"cnn=\d\.\d{4} rnn=(none|\d\.\d{4}) long_context=(yes|no)", h["X-Spam-Status"])
        assert item.content.endswith(raw)  # the original bytes, with headers in front
        flags[label].append(expected.is_spam)
    assert any(flags["spam"]) and not all(flags["ham"])  # the tiny model tells them apart at least sometimes
    rows = {r.id: r for r in p.sink.rows}
    assert len(rows) == len(mails)
    for item in got:
        row = rows[_headers(item.content)["X-Spam-Id"]]
        assert row.sender == "alice@example.org" and row.recipients == ("bob@example.net",)
        assert row.action in ("tagged", "passed") and row.model_version == tiny_trained.version


def test_forged_spam_headers_are_stripped(tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    raw = fixture_mail("train", "spam")[0]
    forged = b"X-Spam-Flag: NO\r\nX-Spam-Status: No, score=0.0\r\nx-spam-score:\r\n 0.0000\r\n" + raw
    send(p.port, forged)
    content = down.wait_for(1)[0].content
    assert content.count(b"X-Spam-Flag:") == 1 and content.count(b"X-Spam-Status:") == 1
    assert b"score=0.0\r\n" not in content and b" 0.0000\r\n" not in content


def test_a_forged_header_continued_over_megabytes_is_stripped_and_the_message_scored(
        tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    # Removing it took the event loop 7 s (quadratic); now linear, and off the loop for a message this large.
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    raw = b"Subject: cheap pills\r\nX-Spam-Flag: NO\r\n" + b" a\r\n" * 400_000 + b"From: a@b.c\r\n\r\nbody\r\n"
    send(p.port, raw)
    content = down.wait_for(1)[0].content
    assert content.endswith(b"Subject: cheap pills\r\nFrom: a@b.c\r\n\r\nbody\r\n")
    assert _headers(content)["X-Spam-Status"].split(",")[0] in ("Yes", "No")


@pytest.mark.parametrize("name", sorted(p.name for p in (DATA / "malformed").glob("*.eml")))
def test_malformed_mail_passes_with_a_verdict(name: str, tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    raw = (DATA / "malformed" / name).read_bytes()
    send(p.port, raw)
    content = down.wait_for(1)[0].content
    status = _headers(content)["X-Spam-Status"]
    assert status.split(",")[0] in ("Yes", "No")
    if name == "long-line.eml":
        assert max(len(line) for line in content.split(b"\r\n")) > 998


def test_reject_threshold_answers_550_and_forwards_nothing(tiny_trained: TrainedTiny, tmp_path: Path, capture,
                                                            proxy):
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path, reject_threshold=0.0))
    with pytest.raises(smtplib.SMTPDataError) as err:
        send(p.port, fixture_mail("train", "spam")[0])
    assert err.value.smtp_code == 550 and err.value.smtp_error.startswith(b"5.7.1")
    assert down.messages == []
    assert [r.action for r in p.sink.rows] == ["rejected"]


def test_spam_threshold_and_subject_tag(tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    down = capture()
    cfg = proxy_config(tiny_trained.models_dir, down.url, tmp_path, spam_threshold=0.0, subject_tag="[SPAM] ")
    p = proxy(cfg)
    sent = [b"Subject: hello there\r\nFrom: a@b.c\r\n\r\nbody\r\n", b"From: a@b.c\r\n\r\nno subject\r\n",
            b"From: a@b.c\r\nSubject: [SPAM] [SPAM]\r\n\r\nmarked by its sender\r\n"]
    for raw in sent:
        send(p.port, raw)
    first, second, third = down.wait_for(3)
    assert b"\r\nSubject: [SPAM] hello there\r\n" in first.content
    assert _headers(first.content)["X-Spam-Flag"] == "YES"
    assert b"Subject: [SPAM]\r\n" in second.content
    # Labelled later, each is learned as spamd scored it: without the tag spamd put on it, or the
    # Subject it added (a model must not learn a mark live mail never has).
    for raw, got in zip(sent, (first, second, third), strict=True):
        assert labels.prepare(got.content, cfg.scoring.subject_tag).raw == lf(raw)
    assert labels.prepare(first.content).raw != lf(sent[0])  # (the tag is known from the config)


def test_maildir_delivery_is_atomic_and_complete(tiny_trained: TrainedTiny, tmp_path: Path, proxy):
    p = proxy(proxy_config(tiny_trained.models_dir, "maildir:Maildir", tmp_path))
    raws = [crlf(raw) for raw in fixture_mail("train", "ham")[:3]]
    for raw in raws:
        send(p.port, raw)
    box = tmp_path / "Maildir"
    files = sorted((box / "new").iterdir())
    assert len(files) == 3 and list((box / "tmp").iterdir()) == []
    contents = [f.read_bytes() for f in files]
    assert sorted(re.search(rb"X-Spam-Id: (\w+)\n", c).group(1).decode() for c in contents) == sorted(
        r.id for r in p.sink.rows)
    assert _in_maildir(box) == sorted(lf(raw) for raw in raws)
    # the envelope on top, then spamd's trace and verdict, and LF line endings, as a delivery agent writes them
    assert all(c.startswith(b"Return-Path: <alice@example.org>\nDelivered-To: bob@example.net\nReceived: from ")
               and past_received(_below_envelope(c)).startswith(b"X-Spam-") and b"\r" not in c for c in contents)


def test_maildir_delivery_writes_the_envelope_on_top(tmp_path: Path, proxy):
    # Return-Path is the envelope sender (<> for a bounce), and each recipient gets a Delivered-To;
    # what follows is the message as spamd passes it on, with LF line endings.
    p = proxy(proxy_config(tmp_path / "no-models", "maildir:Maildir", tmp_path, enabled=False), models=False)
    raw = fixture_mail("starter", "ham")[0].replace(b"\r\n", b"\n")
    assert send(p.port, crlf(raw), sender="", rcpts=("bob@example.net", "carol@example.net")) == {}
    send(p.port, crlf(raw), sender="alice@example.org")
    got = sorted(f.read_bytes() for f in (tmp_path / "Maildir" / "new").iterdir())
    tops = sorted(c.split(b"\n", 3)[:3] for c in got)
    assert tops[0] == [b"Return-Path: <>", b"Delivered-To: bob@example.net", b"Delivered-To: carol@example.net"]
    assert tops[1][:2] == [b"Return-Path: <alice@example.org>", b"Delivered-To: bob@example.net"]
    assert all(past_received(_below_envelope(c)).startswith(b"X-Spam-Status: Unknown\n") for c in got)
    assert all(c.endswith(raw) for c in got)


def test_each_message_gets_a_received_line_for_spamds_hop(tiny_trained: TrainedTiny, tmp_path: Path, capture,
                                                          proxy):
    # RFC 5321 4.4: an SMTP server that takes a message to pass on MUST put a trace field on top, as
    # Postfix's smtpd and amavisd-new do. Postfix's layout: the client's HELO and address, this host,
    # the protocol, the id of the message here (spamd's X-Spam-Id), the recipient when it is the only
    # one, and the date.
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    raw = crlf(fixture_mail("train", "ham")[0])
    with smtplib.SMTP("127.0.0.1", p.port, local_hostname="mta.example.org", timeout=30) as client:
        client.sendmail("alice@example.org", ["bob@example.net"], raw)
        client.sendmail("alice@example.org", ["bob@example.net", "carol@example.net"], raw)
    with smtplib.SMTP("127.0.0.1", p.port, local_hostname="old\tmailer", timeout=30) as client:
        client.helo()  # HELO, not EHLO: plain SMTP; the tab in its name is printed as Postfix does
        client.sendmail("alice@example.org", ["bob@example.net"], raw)
    one, two, old = down.wait_for(3)
    trace = re.compile(rb"Received: from (\S+) \(\[127\.0\.0\.1\]\)\r\n\tby spamd\.localdomain \(spamd\) with (\w+)"
                       rb" id (\w{20})(?:\r\n\tfor <([^>]+)>)?; ([^\r\n]+)\r\nX-Spam-Flag: ")
    found = [trace.match(item.content) for item in (one, two, old)]
    assert all(found), [item.content[:300] for item in (one, two, old)]
    assert [m.group(1, 2, 4) for m in found] == [(b"mta.example.org", b"ESMTP", b"bob@example.net"),
                                                 (b"mta.example.org", b"ESMTP", None),
                                                 (b"old?mailer", b"SMTP", b"bob@example.net")]
    assert [m.group(3).decode() for m in found] == [_headers(i.content)["X-Spam-Id"] for i in (one, two, old)]
    for m in found:
        assert abs(parsedate_to_datetime(m.group(5).decode()).timestamp() - time.time()) < 120
    # The copy spamd learns from (a user labels the delivered message) is the message as it came.
    assert as_learned(one.content) == lf(raw)


@pytest.mark.parametrize("addr, literal", [("::1", "[IPv6:::1]"), ("192.0.2.7", "[192.0.2.7]"),
                                           ("/run/spamd.sock", "[/run/spamd.sock]")])
def test_the_received_line_writes_the_client_as_an_address_literal(addr: str, literal: str):
    # RFC 5321's address literals: an IPv6 address is tagged "IPv6:", as Postfix writes it.
    date = "Fri, 27 Nov 2026 10:00:00 +0000"
    name, value = received_line("mta", addr, "spamd.example", "ESMTP", "a" * 20, [], date=date)
    assert name == "Received"
    assert value == f"from mta ({literal})\n\tby spamd.example (spamd) with ESMTP id {'a' * 20}; {date}"
    assert with_protocol(True, True, False) == "ESMTPS" and with_protocol(True, True, True) == "UTF8SMTPS"


def test_received_header_false_leaves_the_trace_to_the_mtas(tiny_trained: TrainedTiny, tmp_path: Path, capture,
                                                             proxy):
    down = capture()
    cfg = proxy_config(tiny_trained.models_dir, down.url, tmp_path)
    p = proxy(replace(cfg, smtp=replace(cfg.smtp, received_header=False)))
    send(p.port, crlf(fixture_mail("train", "ham")[0]))
    assert down.wait_for(1)[0].content.startswith(b"X-Spam-Flag: ")


def test_a_full_disk_under_the_maildir_is_452_insufficient_storage(tmp_path: Path, proxy, monkeypatch):
    # It was "451 4.4.1 Downstream mail server unavailable". (A full disk is the one fake here: it
    # cannot be made real without mounting a filesystem.)
    p = proxy(proxy_config(tmp_path / "no-models", "maildir:Maildir", tmp_path, enabled=False), models=False)

    def full(root: Path, message: bytes) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(maildir, "deliver", full)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(p.port, crlf(fixture_mail("train", "ham")[0]))
    assert (refused.value.smtp_code, refused.value.smtp_error) == (452, b"4.3.1 Insufficient system storage")
    monkeypatch.undo()
    assert send(p.port, crlf(fixture_mail("train", "ham")[0])) == {}


@pytest.mark.parametrize("url, error", [("maildir:", "names no Maildir"), ("maildir:~/Mail", "")])
def test_a_maildir_url_is_read_as_an_operator_means_it(url: str, error: str, tmp_path: Path):
    # "maildir:" delivered into the config's own directory, "maildir:~/Mail" into a directory named "~".
    cfg = proxy_config(tmp_path / "no-models", url, tmp_path)
    if error:
        with pytest.raises(ConfigError, match=error):
            open_downstream(cfg)
        return
    down = open_downstream(cfg)
    assert isinstance(down, maildir.MaildirDownstream) and down.root == Path.home() / "Mail"


def test_a_failed_maildir_delivery_gives_451_and_the_retry_leaves_one_copy(tiny_trained: TrainedTiny,
                                                                           tmp_path: Path, proxy):
    p = proxy(proxy_config(tiny_trained.models_dir, "maildir:Maildir", tmp_path))
    first, second = [crlf(raw) for raw in fixture_mail("train", "ham")[:2]]
    send(p.port, first)
    box = tmp_path / "Maildir"
    # A real failure: `new/` is a file for a while, so the rename out of tmp/ fails (ENOTDIR).
    # (Taking away write permission would not do: the tests may run as root.)
    (box / "new").rename(box / "new.aside")
    (box / "new").write_bytes(b"")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(p.port, second)
    assert refused.value.smtp_code == 451
    assert list((box / "tmp").iterdir()) == []  # the copy that could not be moved is not left behind
    (box / "new").unlink()
    (box / "new.aside").rename(box / "new")
    assert send(p.port, second) == {}  # the sender's retry
    assert _in_maildir(box) == sorted([lf(first), lf(second)])
    assert list((box / "tmp").iterdir()) == []
    # Each attempt is logged; the refused one says so.
    assert [r.action.endswith(", delivery 451") for r in p.sink.rows] == [False, True, False]


@pytest.mark.parametrize("removed", ["Maildir", "Maildir/new", "Maildir/tmp"])
def test_a_maildir_removed_while_spamd_runs_is_made_again(removed: str, tiny_trained: TrainedTiny, tmp_path: Path,
                                                         proxy):
    p = proxy(proxy_config(tiny_trained.models_dir, "maildir:Maildir", tmp_path))
    first, second = [crlf(raw) for raw in fixture_mail("train", "ham")[:2]]
    send(p.port, first)
    box = tmp_path / "Maildir"
    shutil.rmtree(tmp_path / removed)
    assert send(p.port, second) == {}  # not 451 until spamd restarts
    kept = [first, second] if removed == "Maildir/tmp" else [second]  # the first went with new/
    assert _in_maildir(box) == sorted(lf(raw) for raw in kept)
    assert list((box / "tmp").iterdir()) == []


def test_downstream_connections_are_reused(tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    for raw in fixture_mail("train", "ham")[:5]:
        send(p.port, raw)
    assert len(down.wait_for(5)) == 5
    assert down.connections == 1


def test_a_bounce_with_the_null_sender_is_passed_on_with_it(tiny_trained: TrainedTiny, tmp_path: Path,
                                                           capture, proxy):
    # Bounces and delivery notices come from the null sender (MAIL FROM:<>, RFC 5321 4.5.5). They
    # must be scored and passed on with that empty sender, never refused and never given one (a
    # bounce with a sender can loop). spamd used to send MAIL FROM:<<>> on, which a strict downstream
    # refuses (this aiosmtpd one with 553; Postfix's smtpd reads it as <>): the MTA in front then
    # bounced the bounce to nobody, and the sender never heard that the mail had failed.
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    bounce = crlf(fixture_mail("starter", "ham")[0])
    for rcpts in (("bob@example.net",), ("bob@example.net", "carol@example.net")):
        assert send(p.port, bounce, sender="", rcpts=rcpts) == {}
    got = down.wait_for(2)
    # the downstream (aiosmtpd) gives MAIL FROM:<> as "<>"
    assert [(m.mail_from, m.rcpt_tos) for m in got] == [
        ("<>", ("bob@example.net",)), ("<>", ("bob@example.net", "carol@example.net"))]
    assert all(m.content.endswith(bounce) and _headers(m.content)["X-Spam-Status"].startswith(("Yes", "No"))
               for m in got)
    assert [row.sender for row in p.sink.rows] == ["<>", "<>"]  # as Postfix logs it: from=<>


@pytest.mark.parametrize("delivery", ["smtp", "maildir"])
def test_a_null_recipient_or_control_characters_in_an_address_are_refused_by_spamd(delivery: str, tmp_path: Path,
                                                                                  capture, proxy):
    # Postfix's smtpd answers these 501 (RCPT TO:<> has no mailbox to deliver to). spamd used to take
    # them: with maildir delivery a message was delivered with "Delivered-To: <>", or with a NUL in it.
    down = capture()
    url = down.url if delivery == "smtp" else "maildir:Maildir"
    p = proxy(proxy_config(tmp_path / "no-models", url, tmp_path, enabled=False), models=False)
    with smtplib.SMTP("127.0.0.1", p.port) as client:
        client.ehlo()
        assert client.docmd("MAIL FROM:<a\x01@example.org>") == (501, b"5.1.7 Bad sender address syntax")
        assert client.docmd("MAIL FROM:<alice@example.org>")[0] == 250
        for bad in ("<>", "<bob\x00@example.net>", "<bob@exam\x7fple.net>", "<bob\x1b@example.net>"):
            assert client.docmd(f"RCPT TO:{bad}") == (501, b"5.1.3 Bad recipient address syntax"), bad
        assert client.docmd("RCPT TO:<bob@example.net>")[0] == 250
        assert client.docmd("DATA")[0] == 354
        client.send(b"Subject: one recipient\r\n\r\nhello\r\n.\r\n")
        assert client.getreply()[0] == 250
    if delivery == "smtp":
        assert [(m.mail_from, m.rcpt_tos) for m in down.wait_for(1)] == [("alice@example.org", ("bob@example.net",))]
    else:
        [copy] = [f.read_bytes() for f in (tmp_path / "Maildir" / "new").iterdir()]
        assert copy.startswith(b"Return-Path: <alice@example.org>\nDelivered-To: bob@example.net\nReceived: ")
        assert past_received(_below_envelope(copy)).startswith(b"X-Spam-")


UTF8_MAIL = ("Subject: Grüße aus Köln\r\nFrom: Jörg <jörg@exämple.org>\r\nMessage-ID: <u1@example.org>\r\n"
             "Content-Type: text/plain; charset=utf-8\r\n\r\nBis morgen, schöne Grüße.\r\n").encode()
# UTF-8 in the body only: 8BITMIME carries it, SMTPUTF8 is not needed.
UTF8_BODY_MAIL = ("Subject: Greetings from Cologne\r\nFrom: Joerg <joerg@example.org>\r\n"
                  "Message-ID: <u2@example.org>\r\nContent-Type: text/plain; charset=utf-8\r\n"
                  "Content-Transfer-Encoding: 8bit\r\n\r\n"
                  "Bis morgen, schöne Grüße.\r\n").encode()


def test_smtputf8_mail_is_scored_and_passed_on_with_its_utf8_envelope(tiny_trained: TrainedTiny, tmp_path: Path,
                                                                        capture, proxy):
    # Postfix relays mail that arrived with SMTPUTF8 only to a next hop that offers it, and
    # bounces it otherwise: a filter without SMTPUTF8 would bounce internationalised mail.
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as client:
        client.ehlo("mta.example.org")
        assert client.has_extn("smtputf8")
        assert client.sendmail("jörg@exämple.org", ["bob@example.net", "zoë@example.net"], UTF8_MAIL,
                               mail_options=["SMTPUTF8"]) == {}
    [item] = down.wait_for(1)
    assert (item.mail_from, item.rcpt_tos) == ("jörg@exämple.org", ("bob@example.net", "zoë@example.net"))
    assert "SMTPUTF8" in item.mail_options and item.content.endswith(UTF8_MAIL)
    assert b" (spamd) with UTF8SMTP id " in item.content  # RFC 6531's name for the protocol
    [row] = p.sink.rows
    assert row.sender == "jörg@exämple.org" and row.verdict in ("ham", "spam")


@pytest.mark.parametrize("eightbitmime", [True, False])
def test_8bit_mail_goes_on_as_it_is_with_body_only_where_the_downstream_offers_8bitmime(
        tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy, eightbitmime: bool):
    # spamd never rewrites a message, so it does not convert 8-bit mail to 7 bits for a downstream
    # without 8BITMIME: the bytes go on as they came, and BODY=8BITMIME only to one that knows it.
    down = capture(eightbitmime=eightbitmime)
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as client:
        client.ehlo("mta.example.org")
        assert client.has_extn("8bitmime")
        assert client.sendmail("joerg@example.org", ["bob@example.net"], UTF8_BODY_MAIL,
                               mail_options=["BODY=8BITMIME"]) == {}
    [item] = down.wait_for(1)
    assert item.content.endswith(UTF8_BODY_MAIL)
    assert ("BODY=8BITMIME" in item.mail_options) == eightbitmime


def test_a_utf8_sender_for_a_downstream_without_smtputf8_is_refused_not_mangled(tiny_trained: TrainedTiny,
                                                                                 tmp_path: Path, capture, proxy):
    down = capture(smtputf8=False)
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as err:
            client.sendmail("jörg@exämple.org", ["bob@example.net"], UTF8_MAIL, mail_options=["SMTPUTF8"])
        assert (err.value.smtp_code, err.value.smtp_error) == (553, b"5.6.7 Downstream mail server does not "
                                                                    b"support SMTPUTF8")
        client.rset()
        # An ASCII envelope and ASCII headers need no SMTPUTF8: the message goes on without the parameter.
        assert client.sendmail("joerg@example.org", ["bob@example.net"], UTF8_BODY_MAIL,
                               mail_options=["SMTPUTF8"]) == {}
    [item] = down.wait_for(1)
    assert item.mail_from == "joerg@example.org" and "SMTPUTF8" not in item.mail_options
    assert item.content.endswith(UTF8_BODY_MAIL)
    assert down.connections == 1  # the refusal gave its connection back to the pool


def test_utf8_headers_sent_with_smtputf8_are_refused_for_a_downstream_without_it(tiny_trained: TrainedTiny,
                                                                                 tmp_path: Path, capture, proxy):
    # As Postfix's SMTP client: a message sent with SMTPUTF8 whose headers hold UTF-8 is never
    # passed to a server without SMTPUTF8 (RFC 6531), even with an ASCII envelope. The refusal
    # comes at DATA's end, the first moment a proxy sees the headers; the sender's MTA bounces it.
    down = capture(smtputf8=False)
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as client:
        with pytest.raises(smtplib.SMTPDataError) as err:
            client.sendmail("joerg@example.org", ["bob@example.net"], UTF8_MAIL, mail_options=["SMTPUTF8"])
        assert (err.value.smtp_code, err.value.smtp_error) == (
            550, b"5.6.9 UTF-8 headers, and the downstream mail server does not support SMTPUTF8")
        # Sent without SMTPUTF8, the same message goes on as it is, as Postfix passes it.
        assert client.sendmail("joerg@example.org", ["bob@example.net"], UTF8_MAIL) == {}
    [item] = down.wait_for(1)
    assert item.content.endswith(UTF8_MAIL) and "SMTPUTF8" not in item.mail_options
    assert down.connections == 1  # the refused transaction was reset and its connection reused
    refused, passed = p.sink.rows
    assert refused.action.endswith("delivery 550") and "5.6.9" in refused.error
    assert passed.error == "" and passed.verdict in ("ham", "spam")


def test_a_utf8_recipient_for_a_downstream_without_smtputf8_is_refused_alone(tiny_trained: TrainedTiny,
                                                                              tmp_path: Path, capture, proxy):
    # The sender is ASCII, so MAIL goes through; the UTF-8 recipient cannot be passed on, and
    # gets spamd's 553 5.6.7 without reaching the downstream; the other recipient gets the mail.
    down = capture(smtputf8=False)
    down.behaviour.refuse["zoë@example.net"] = "550 5.1.1 Had it been sent on, this would be the answer"
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as client:
        refused = client.sendmail("joerg@example.org", ["zoë@example.net", "bob@example.net"], UTF8_BODY_MAIL,
                                  mail_options=["SMTPUTF8"])
    assert refused == {"zoë@example.net": (553, b"5.6.7 Downstream mail server does not support SMTPUTF8")}
    [item] = down.wait_for(1)
    assert (item.mail_from, item.rcpt_tos) == ("joerg@example.org", ("bob@example.net",))
    [row] = p.sink.rows
    assert row.recipients == ("bob@example.net",)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ipv6() -> bool:
    try:
        _free_port("::")
    except OSError:
        return False
    return True


@pytest.mark.parametrize(("listen", "host"), [
    ("127.0.0.1", "127.0.0.1"),
    ("127.0.0.1", "localhost"),  # a name of this host
    ("0.0.0.0", "127.0.0.1"),  # listening on every address
    pytest.param("[::]", "127.0.0.1", marks=pytest.mark.skipif(not _ipv6(), reason="no IPv6 here")),  # dual stack
])
def test_delivery_to_spamds_own_listener_stops_it_at_start(listen: str, host: str, tmp_path: Path, proxy):
    # A url one port off the reinjection port that lands on spamd itself would make each MAIL open
    # a transaction with spamd itself, and so on until the pool ran out, the sender's MAIL left
    # unanswered: refused at start, as Postfix refuses mail that "loops back to myself".
    port = _free_port()
    cfg = proxy_config(tmp_path / "no-models", f"smtp://{host}:{port}", tmp_path, enabled=False)
    cfg = replace(cfg, smtp=replace(cfg.smtp, listen=f"{listen}:{port}"))
    with pytest.raises(ConfigError, match="loop back into spamd"):
        proxy(cfg, models=False)
    # the listening socket was given back: another spamd can take the port at once
    ok = replace(cfg, delivery=replace(cfg.delivery, url="maildir:Maildir"))
    assert proxy(ok, models=False).port == port


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "nonexistent.invalid:10025", "::1:10025", "127.0.0.1"])
def test_a_listen_address_that_cannot_work_is_a_config_error(listen: str):
    # 99999 was taken modulo 65536 (spamd listened where no MTA looked), a name that does not
    # resolve and an IPv6 address without brackets were tracebacks.
    with pytest.raises(ConfigError, match=r"\[smtp\] listen"):
        listen_socket(listen)


def test_delivery_to_another_address_on_the_same_port_is_delivered(tmp_path: Path, capture, proxy):
    # 127.0.0.2 is this host too, but spamd listening there and delivering to 127.0.0.1 on the
    # same port is no loop: the downstream has that port on 127.0.0.1.
    downstream = capture()
    cfg = proxy_config(tmp_path / "no-models", f"smtp://127.0.0.1:{downstream.port}", tmp_path, enabled=False)
    spamd = proxy(replace(cfg, smtp=replace(cfg.smtp, listen=f"127.0.0.2:{downstream.port}")), models=False)
    raw = crlf(fixture_mail("starter", "ham")[0])
    with smtplib.SMTP("127.0.0.2", spamd.port, timeout=30) as client:
        assert client.sendmail("alice@example.org", ["bob@example.net"], raw) == {}
    assert len(downstream.messages) == 1
