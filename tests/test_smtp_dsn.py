"""DSN (RFC 3461) through spamd on loopback: RET/ENVID and NOTIFY/ORCPT reach the downstream as written.

A real smtplib client plays the MTA, spamd runs with scoring off (DSN is all that is tested
here), and the capturing downstream offers DSN as Postfix does (or not, where said).
"""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from spamd.config import Config
from tests.fixtures_smtp import proxy_config

HAM = b"Subject: lunch\r\nFrom: Carol <carol@example.org>\r\nMessage-ID: <d1@example.org>\r\n\r\nNoon?\r\n"


def config(tmp_path: Path, url: str) -> Config:
    return proxy_config(tmp_path / "no-models", url, tmp_path, enabled=False)


def test_dsn_parameters_are_passed_on_as_written(tmp_path: Path, capture, proxy):
    down = capture()
    p = proxy(config(tmp_path, down.url), models=False)
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as client:
        client.ehlo("mta.example.org")
        assert client.has_extn("dsn")
        # Mixed case on purpose: an ENVID and an ORCPT address are passed on unchanged.
        assert client.sendmail("alice@example.org", ["bob@example.net", "Carol@example.net"], HAM,
                               mail_options=["RET=HDRS", "ENVID=QQ314159+2BaBc"],
                               rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Carol@Example.NET"]) == {}
        assert client.sendmail("alice@example.org", ["bob@example.net"], HAM, rcpt_options=["NOTIFY=NEVER"]) == {}
    first, second = down.wait_for(2)
    assert first.dsn_mail == ("RET=HDRS", "ENVID=QQ314159+2BaBc")
    assert first.dsn_rcpt == {"bob@example.net": ("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Carol@Example.NET"),
                              "Carol@example.net": ("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Carol@Example.NET")}
    assert second.dsn_mail == () and second.dsn_rcpt == {"bob@example.net": ("NOTIFY=NEVER",)}
    assert first.content.endswith(HAM) and len(p.sink.rows) == 2


def test_a_downstream_without_dsn_gets_the_message_without_the_parameters(tmp_path: Path, capture, proxy):
    down = capture(dsn=False)
    p = proxy(config(tmp_path, down.url), models=False)
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as client:
        assert client.sendmail("alice@example.org", ["bob@example.net"], HAM, mail_options=["RET=FULL"],
                               rcpt_options=["NOTIFY=DELAY"]) == {}
    [item] = down.wait_for(1)
    assert item.content.endswith(HAM) and item.mail_options == ()


@pytest.mark.parametrize("command, reply_start", [
    ("MAIL FROM:<alice@example.org> RET=SOME", "501 5.5.4 RET takes FULL or HDRS"),
    ("MAIL FROM:<alice@example.org> ENVID=a=b", "501 5.5.4 ENVID takes"),
    ("MAIL FROM:<alice@example.org> RET=FULL RET=HDRS", "501 5.5.4 RET given twice"),
    ("RCPT TO:<bob@example.net> NOTIFY=NEVER,SUCCESS", "501 5.5.4 NOTIFY takes"),
    ("RCPT TO:<bob@example.net> ORCPT=nosemicolon", "501 5.5.4 ORCPT takes"),
    ("RCPT TO:<bob@example.net> ORCPT=rfc822;bob\tx@example.net", "501 5.5.4 ORCPT takes"),  # was a 500
])
def test_malformed_dsn_parameters_get_501(command: str, reply_start: str, tmp_path: Path, capture, proxy):
    down = capture()
    p = proxy(config(tmp_path, down.url), models=False)
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as client:
        client.ehlo("mta.example.org")
        if command.startswith("RCPT"):
            assert client.docmd("MAIL FROM:<alice@example.org>")[0] == 250
        code, text = client.docmd(command)
    assert f"{code} {text.decode()}".startswith(reply_start)


def test_help_still_knows_the_commands_spamd_overrides(tmp_path: Path, capture, proxy):
    # spamd replaces aiosmtpd's MAIL, RCPT and DATA (and adds XFORWARD); HELP must not lose them.
    down = capture()
    p = proxy(config(tmp_path, down.url), models=False)
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as client:
        client.ehlo("mta.example.org")
        listed = client.docmd("HELP")[1].decode().split(":", 1)[1].split()
        assert {"MAIL", "RCPT", "DATA", "XFORWARD"} <= set(listed)
        assert client.docmd("HELP", "MAIL") == (250, b"Syntax: MAIL FROM: <address> [SP <mail-parameters>]")


def test_long_dsn_parameters_fit_the_command_lines_dsn_allows(tmp_path: Path, capture, proxy):
    # RFC 3461 4: DSN adds up to 100 characters to a MAIL line and 500 to a RCPT line. aiosmtpd held
    # RCPT to RFC 5321's 512, so a long address with its ORCPT got "500 Command line too long", which
    # bounces the recipient.
    down = capture()
    p = proxy(config(tmp_path, down.url), models=False)
    address = "l" * 64 + "@" + ".".join(["d" * 40] * 4) + ".example"  # 240 characters, a valid address
    envid = "Q" * 100
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as client:
        client.ehlo("mta.example.org")
        for _ in range(3):  # aiosmtpd added to its limits at each EHLO, for every session at once
            client.ehlo("mta.example.org")
        mail = f"MAIL FROM:<{address}> SIZE=999 RET=HDRS ENVID={envid} SMTPUTF8"
        rcpt = f"RCPT TO:<{address}> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;{address}"
        assert len(rcpt) > 512
        assert client.docmd(mail)[0] == 250
        assert client.docmd(rcpt)[0] == 250
        assert client.docmd(rcpt + " " + "x" * 500)[0] == 500  # a limit still holds
        assert client.docmd("DATA")[0] == 354
        client.send(HAM + b".\r\n")
        assert client.getreply()[0] == 250
    [got] = down.wait_for(1)
    assert got.dsn_mail == ("RET=HDRS", f"ENVID={envid}")
    assert got.dsn_rcpt == {address: ("NOTIFY=SUCCESS,FAILURE,DELAY", f"ORCPT=rfc822;{address}")}
