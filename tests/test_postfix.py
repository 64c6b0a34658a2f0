"""spamd between two halves of a real Postfix: after-queue content_filter and before-queue smtpd_proxy_filter.

    sender (smtplib, swaks) ─▶ Postfix smtpd ─▶ spamd serve ─▶ Postfix reinjection smtpd ─▶ virtual ─▶ Maildir
    delivered message ─▶ deploy/dovecot/ pipe script ─▶ spamd label (a user's "spam" / "not spam")

Postfix is configured with deploy/postfix/'s snippets as docs/operators.md quotes them
(tests/postfix_instance.py). Skipped only where Postfix is not installed and
SPAMD_REQUIRE_POSTFIX is unset; CI (.ci/run) installs it and sets the variable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from spamd.config import load_config
from spamd.mail.headers import header_fields, split_header_block
from tests.fixtures_models import TrainedTiny, fixture_mail
from tests.postfix_instance import DEPLOY, MAILBOX, PostfixInstance, SpamdProcess, free_port, postfix_installed, snippet

DOVECOT = DEPLOY.parent / "dovecot"
GUIDE = DEPLOY.parent.parent / "docs" / "operators.md"
# A Postfix instance of one's own needs root (its master starts as root and drops to `postfix`).
USABLE = postfix_installed() and shutil.which("swaks") is not None and os.geteuid() == 0
needs_postfix = pytest.mark.skipif(
    not USABLE and not os.environ.get("SPAMD_REQUIRE_POSTFIX"),
    reason="needs root, Postfix and swaks (CI installs both, runs as root, sets SPAMD_REQUIRE_POSTFIX=1)")


def with_id(raw: bytes, tag: str) -> bytes:
    """The fixture message with a header of our own in front, to find it again after delivery."""
    return b"X-Test-Id: %s\r\n" % tag.encode() + raw


def swaks(port: int, raw: bytes, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Send with swaks, the operator's smoke-test tool; its transcript is what a sender sees."""
    message = tmp_path / "message.eml"
    message.write_bytes(raw)
    return subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(port), "--from", "alice@example.org",
                           "--to", MAILBOX, "--data", f"@{message}"], capture_output=True, text=True, timeout=60)


CLIENT_HELO = "client.example.org"  # what the test's sender says in EHLO


def send(port: int, raw: bytes, sender: str = "alice@example.org") -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=60, local_hostname=CLIENT_HELO) as client:
        return client.sendmail(sender, [MAILBOX], raw)


def header(message: bytes, name: bytes) -> bytes:
    """The one value of header NAME in a delivered message (unfolded)."""
    head = message.split(b"\n\n", 1)[0].replace(b"\n ", b" ").replace(b"\n\t", b" ")
    prefix = name.lower() + b":"
    values = [line[len(prefix):].strip() for line in head.splitlines() if line.lower().startswith(prefix)]
    assert len(values) == 1, (name, head)
    return values[0]


def score_log_actions(spamd: SpamdProcess) -> list[tuple[str, str]]:
    engine = create_engine(f"sqlite:///{spamd.workdir / 'spamd.db'}")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT message_id, action FROM score_logs ORDER BY time")).all()
    engine.dispose()
    return [(str(m), str(a)) for m, a in rows]


def score_log_clients(spamd: SpamdProcess, n: int) -> dict[str, dict[str, str]]:
    """Score-log id → what the row keeps of the client (queue_id and `extra`), once n rows are written."""
    engine = create_engine(f"sqlite:///{spamd.workdir / 'spamd.db'}")
    deadline = time.monotonic() + 30
    try:
        while True:
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT id, queue_id, extra FROM score_logs")).all()
            if len(rows) >= n or time.monotonic() > deadline:
                return {str(i): {"queue_id": q, **json.loads(extra)} for i, q, extra in rows}
            time.sleep(0.2)
    finally:
        engine.dispose()


def report(script: str, user: str, message: bytes, spamd: SpamdProcess) -> None:
    """Run a deploy/dovecot/ pipe script as Dovecot's sieve would: the message on stdin, the user as $1."""
    env = {**os.environ, "SPAMD": str(Path(sys.executable).with_name("spamd")), "SPAMD_CONFIG": str(spamd.config)}
    proc = subprocess.run([str(DOVECOT / script), user], input=message, env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.startswith(b"1 added"), proc.stdout


def labels(spamd: SpamdProcess) -> set[tuple[str, str, str, str]]:
    engine = create_engine(f"sqlite:///{spamd.workdir / 'spamd.db'}")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT score_log_id, label, labelled_by, source FROM labelled_messages")).all()
    engine.dispose()
    return {(str(i), str(lb), str(by), str(src)) for i, lb, by, src in rows}


Setup = tuple[PostfixInstance, SpamdProcess]


@pytest.fixture
def mail_system(tiny_trained: TrainedTiny, tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    """Factory: `mail_system(mode, reject_threshold=..., reinjection={...})` starts Postfix in MODE and spamd
    between its halves; `reinjection` sets parameters on the reinjection port's smtpd only."""
    made: list[Setup] = []

    def make(mode: str, reject_threshold: str = "false", reinjection: dict[str, str] | None = None) -> Setup:
        spamd_port = free_port()
        postfix = PostfixInstance(mode, spamd_port)
        for name, value in (reinjection or {}).items():  # `-o name=value` on the reinjection smtpd
            postfix.postfix("postconf", "-P", f"127.0.0.1:{postfix.reinject_port}/inet/{name}={value}")
        spamd = SpamdProcess(tmp_path / mode, tiny_trained.models_dir, spamd_port, postfix.reinject_port,
                             reject_threshold)
        made.append((postfix, spamd))
        postfix.start()
        spamd.start()
        return postfix, spamd

    yield make
    for postfix, spamd in made:
        spamd.stop()
        postfix.stop()
        postfix.remove()


@pytest.mark.slow
@needs_postfix
def test_after_queue_delivers_with_spamd_headers(mail_system: Callable[..., Setup]):
    postfix, spamd = mail_system("after-queue")
    ham, spam = fixture_mail("train", "ham")[0], fixture_mail("train", "spam")[0]
    assert send(postfix.public_port, with_id(ham, "aq-ham")) == {}
    assert send(postfix.public_port, with_id(spam, "aq-spam")) == {}
    delivered = postfix.wait_delivered(2)
    assert len(delivered) == 2, postfix.log() + spamd.log()
    by_id = {header(m, b"X-Test-Id"): m for m in delivered}
    assert header(by_id[b"aq-ham"], b"X-Spam-Flag") == b"NO"
    assert header(by_id[b"aq-spam"], b"X-Spam-Flag") == b"YES"
    for message in delivered:
        assert header(message, b"X-Spam-Status").startswith((b"Yes, score=", b"No, score="))
        float(header(message, b"X-Spam-Score"))
        log_id = header(message, b"X-Spam-Id").decode()
        assert len(log_id) > 8
        # The trace, newest first: the reinjection's smtpd, spamd's hop (with its id), the public smtpd.
        trace = [f for f in header_fields(split_header_block(message)[0]) if f.startswith(b"Received:")]
        assert [b"(Postfix)" in f for f in trace[:3]] == [True, False, True], trace
        assert f" (spamd) with ESMTP id {log_id}".encode() in trace[1].replace(b"\n\t", b" "), trace
    assert postfix.queue() == []
    assert "relay=127.0.0.1[127.0.0.1]" in postfix.log()  # it really went through the spamd transport
    # XFORWARD: Postfix told spamd each message's original client and queue id, and spamd passed
    # them on: the reinjecting smtpd logs them (orig_queue_id is the id the spamd transport sent).
    sent = re.findall(r"postfix/spamd/smtp\[\d+\]: (\w+): to=<", postfix.log())
    assert len(sent) == 2 and all(f"orig_queue_id={qid}, orig_client=localhost[127.0.0.1]" in postfix.log()
                                  for qid in sent), postfix.log()
    # ...and the score log keeps that queue id and HELO with each message's row (`spamd logs --queue-id`).
    clients = score_log_clients(spamd, 2)
    assert {header(m, b"X-Spam-Id").decode() for m in delivered} == set(clients)
    assert sorted(c["queue_id"] for c in clients.values()) == sorted(sent), clients
    assert all(c["helo"] == CLIENT_HELO and c["client_name"] == "localhost" for c in clients.values()), clients

    # The way back: bob moves the ham into Junk and the spam out of it; Dovecot's sieve pipes
    # each delivered message, headers and all, to the scripts in deploy/dovecot/.
    for script, test_id in (("spamd-report-spam", b"aq-ham"), ("spamd-report-ham", b"aq-spam")):
        report(script, "bob", by_id[test_id], spamd)
    labelled = labels(spamd)
    assert labelled == {(header(by_id[b"aq-ham"], b"X-Spam-Id").decode(), "spam", "bob", "pipe"),
                        (header(by_id[b"aq-spam"], b"X-Spam-Id").decode(), "ham", "bob", "pipe")}


@pytest.mark.slow
@needs_postfix
def test_after_queue_passes_a_bounce_on_with_the_null_sender(mail_system: Callable[..., Setup]):
    # A bounce or delivery notice for bob (MAIL FROM:<>) goes through spamd like any mail and
    # reaches him with the null sender. (spamd used to send MAIL FROM:<<>> on; Postfix's smtpd
    # reads that as <>, even with strict_rfc821_envelopes = yes, so this test passed then too:
    # test_smtp_proxy's downstream is the one that refused it.)
    postfix, spamd = mail_system("after-queue")
    assert send(postfix.public_port, with_id(fixture_mail("train", "ham")[0], "aq-bounce"), sender="") == {}
    delivered = postfix.wait_delivered(1)
    assert len(delivered) == 1, postfix.log() + spamd.log()
    assert header(delivered[0], b"Return-Path") == b"<>"
    assert header(delivered[0], b"X-Spam-Status").startswith((b"Yes, score=", b"No, score="))
    assert "relay=127.0.0.1[127.0.0.1]" in postfix.log()  # through the spamd transport
    assert postfix.queue() == []


@pytest.mark.slow
@needs_postfix
def test_before_queue_rejects_spam_at_the_sender(mail_system: Callable[..., Setup], tmp_path: Path):
    postfix, spamd = mail_system("before-queue", reject_threshold="0.5")
    ham, spam = fixture_mail("train", "ham")[0], fixture_mail("train", "spam")[0]
    assert send(postfix.public_port, with_id(ham, "bq-ham")) == {}
    refused = swaks(postfix.public_port, with_id(spam, "bq-spam"), tmp_path)
    assert refused.returncode != 0
    assert "<** 550 5.7.1 Message refused as spam" in refused.stdout, refused.stdout + refused.stderr
    postfix.wait_delivered(1)
    time.sleep(0.5)  # a wrongly accepted spam would have arrived by now
    delivered = postfix.delivered()
    assert [header(m, b"X-Test-Id") for m in delivered] == [b"bq-ham"], postfix.log()
    assert header(delivered[0], b"X-Spam-Flag") == b"NO"
    assert postfix.queue() == []  # the spam was never queued: no bounce to a forged sender
    assert "proxy-reject: END-OF-MESSAGE: 550 5.7.1" in postfix.log()
    assert spamd.stop() == 0
    assert sorted(action for _, action in score_log_actions(spamd)) == ["passed", "rejected"]

    with pytest.raises(smtplib.SMTPRecipientsRefused) as down:  # spamd away: the sender keeps it, retries
        send(postfix.public_port, with_id(ham, "bq-down"))
    assert down.value.recipients[MAILBOX][0] == 451


@pytest.mark.slow
@needs_postfix
def test_after_queue_keeps_mail_while_spamd_is_down(mail_system: Callable[..., Setup]):
    postfix, spamd = mail_system("after-queue")
    spamd.stop()
    ham = fixture_mail("train", "ham")[1]
    assert send(postfix.public_port, with_id(ham, "down")) == {}  # Postfix accepts: it is queued

    deadline = time.monotonic() + 20
    while not (queued := postfix.queue()) or "deferred" != queued[0]["queue_name"]:
        assert time.monotonic() < deadline, (queued, postfix.log())
        time.sleep(0.2)
    reason = queued[0]["recipients"][0]["delay_reason"]  # type: ignore[index]
    assert f"127.0.0.1[127.0.0.1]:{spamd.port}" in reason and "refused" in reason
    assert postfix.delivered() == []

    spamd.start()
    postfix.flush()  # without it, the retry comes after minimal_backoff_time
    delivered = postfix.wait_delivered(1)
    assert [header(m, b"X-Test-Id") for m in delivered] == [b"down"], postfix.log()
    assert header(delivered[0], b"X-Spam-Flag") in (b"NO", b"YES")
    assert postfix.queue() == []
    assert spamd.stop() == 0
    assert [action for _, action in score_log_actions(spamd)] == ["passed"]


@pytest.mark.parametrize("path", sorted(str(p.relative_to(DEPLOY.parent)) for p in DEPLOY.parent.rglob("*")
                                        if p.is_file()))
def test_the_guide_quotes_each_deploy_file_whole(path: str):
    """docs/operators.md shows the configuration these tests run, not a copy that drifts."""
    text = (DEPLOY.parent / path).read_text()
    if path.endswith("spamd-report-ham"):  # the guide says: the spam script with `ham`
        text = text.replace("ham", "spam")
    assert text.rstrip("\n") in GUIDE.read_text(), f"update {path} in {GUIDE.name}"


def test_the_production_config_loads_and_matches_the_postfix_snippets():
    cfg = load_config(DEPLOY.parent / "spamd.toml")
    assert cfg.smtp.listen == "127.0.0.1:10025"  # content_filter / smtpd_proxy_filter in deploy/postfix/
    assert cfg.delivery.url == "smtp://127.0.0.1:10026"  # the reinjection service in deploy/postfix/
    for mode in ("after-queue", "before-queue"):
        assert "127.0.0.1]:10025" in snippet(mode, "main.cf") or "=127.0.0.1:10025" in snippet(mode, "master.cf")
        assert "\n127.0.0.1:10026 inet" in snippet(mode, "master.cf")


@pytest.mark.slow
@needs_postfix
def test_after_queue_passes_internationalised_mail_on(mail_system: Callable[..., Setup]):
    # Mail that arrives with SMTPUTF8 (a UTF-8 sender) is relayed by Postfix only to a next hop
    # that offers SMTPUTF8, and bounced otherwise: spamd offers it and passes it on.
    postfix, spamd = mail_system("after-queue")
    raw = with_id(fixture_mail("train", "ham")[0], "aq-utf8")
    with smtplib.SMTP("127.0.0.1", postfix.public_port, timeout=60) as client:
        assert client.sendmail("jörg@exämple.org", [MAILBOX], raw, mail_options=["SMTPUTF8"]) == {}
    delivered = postfix.wait_delivered(1)
    assert [header(m, b"X-Test-Id") for m in delivered] == [b"aq-utf8"], postfix.log() + spamd.log()
    assert header(delivered[0], b"X-Spam-Flag") in (b"YES", b"NO")
    assert header(delivered[0], b"Return-Path") == "<jörg@exämple.org>".encode()
    assert postfix.queue() == []


@pytest.mark.slow
@needs_postfix
def test_after_queue_utf8_headers_bounce_when_reinjection_lacks_smtputf8(mail_system: Callable[..., Setup]):
    # With `smtputf8_enable = no` on the reinjection port, Postfix's own SMTP client would refuse a
    # message sent with SMTPUTF8 whose headers hold UTF-8; spamd, between the two, refuses it too
    # (550 5.6.9 at DATA's end), so Postfix bounces it instead of passing it on. A message with
    # ASCII headers and an ASCII envelope needs no SMTPUTF8 and is delivered.
    postfix, spamd = mail_system("after-queue", reinjection={"smtputf8_enable": "no"})
    utf8 = "Comments: Grüße aus Köln\r\n".encode() + with_id(fixture_mail("train", "ham")[0], "aq-utf8-head")
    ascii_head = with_id(fixture_mail("train", "ham")[1], "aq-ascii-head")
    with smtplib.SMTP("127.0.0.1", postfix.public_port, timeout=60) as client:
        for raw in (utf8, ascii_head):
            assert client.sendmail("alice@example.org", [MAILBOX], raw, mail_options=["SMTPUTF8"]) == {}
    delivered = postfix.wait_delivered(1)
    log = ""
    deadline = time.monotonic() + 15
    while "status=bounced" not in log and time.monotonic() < deadline:
        time.sleep(0.2)
        log = postfix.log()
    assert [header(m, b"X-Test-Id") for m in delivered] == [b"aq-ascii-head"], log + spamd.log()
    bounced = re.search(r"postfix/spamd/smtp\[\d+\]: \w+: to=<bob@example.net>.*status=bounced \((.*)\)", log)
    assert bounced and "550 5.6.9" in bounced.group(1), log


@pytest.mark.slow
@needs_postfix
def test_after_queue_a_success_notice_comes_from_the_final_delivery(mail_system: Callable[..., Setup]):
    # NOTIFY=SUCCESS: had spamd dropped the DSN request, Postfix would report the message
    # "relayed" at the spamd hop. Passed on, the notice comes from the delivery into the Maildir.
    postfix, spamd = mail_system("after-queue")
    raw = with_id(fixture_mail("train", "ham")[0], "aq-dsn")
    with smtplib.SMTP("127.0.0.1", postfix.public_port, timeout=60) as client:
        assert client.sendmail("alice@example.org", [MAILBOX], raw, mail_options=["RET=HDRS"],
                               rcpt_options=["NOTIFY=SUCCESS"]) == {}
    assert len(postfix.wait_delivered(1)) == 1, postfix.log() + spamd.log()
    log = ""
    deadline = time.monotonic() + 15
    while "sender delivery status notification" not in log and time.monotonic() < deadline:
        time.sleep(0.2)
        log = postfix.log()
    filtered = re.search(r"postfix/spamd/smtp\[\d+\]: (\w+): to=<", log)
    delivered = re.search(r"postfix/virtual\[\d+\]: (\w+): to=<", log)
    assert filtered and delivered, log
    assert f"{delivered.group(1)}: sender delivery status notification" in log, log
    assert f"{filtered.group(1)}: sender delivery status notification" not in log, log
