"""XFORWARD on loopback: the MTA names the original client; spamd logs it and passes it on.

A real smtplib client plays the MTA (Postfix's content filter sends XFORWARD the same way;
tests/test_postfix.py has the real thing), spamd runs with scoring off (XFORWARD is all that
is tested here), and the capturing downstream offers XFORWARD for some attributes.
"""

from __future__ import annotations

import logging
import smtplib
import time
from dataclasses import replace
from pathlib import Path

import pytest

from spamd.config import Config
from spamd.errors import ConfigError
from spamd.smtp import replies, xforward
from tests.fixtures_smtp import proxy_config

HAM = b"Subject: lunch\r\nFrom: Carol <carol@example.org>\r\nMessage-ID: <x1@example.org>\r\n\r\nNoon?\r\n"


def config(tmp_path: Path, url: str, hosts: tuple[str, ...] | None = None) -> Config:
    cfg = proxy_config(tmp_path / "no-models", url, tmp_path, enabled=False)
    return cfg if hosts is None else replace(cfg, smtp=replace(cfg.smtp, xforward_hosts=hosts))


def mta(port: int) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo("mta.example.org")
    return client


def test_the_forwarded_client_is_logged_and_passed_on_for_one_transaction(tmp_path: Path, capture, proxy, caplog):
    caplog.set_level(logging.INFO, logger="spamd.smtp")
    down = capture(xforward="NAME ADDR PROTO HELO")  # offers four of the seven attributes
    p = proxy(config(tmp_path, down.url), models=False)
    with mta(p.port) as client:
        assert set(client.esmtp_features["xforward"].split()) == set(xforward.ATTRIBUTES)
        assert client.docmd("XFORWARD", "NAME=mx.sender.example ADDR=192.0.2.7 PORT=4711 IDENT=4dQ7x2Zc1Bz")[0] == 250
        assert client.docmd("XFORWARD", "HELO=odd+2Bhelo.example PROTO=ESMTP")[0] == 250  # xtext: +2B is "+"
        client.sendmail("alice@example.org", ["bob@example.net"], HAM)
        client.sendmail("alice@example.org", ["bob@example.net"], HAM)  # none given for this one
    first, second = down.wait_for(2)
    # What the downstream takes of it, xtext-encoded again; PORT it does not offer.
    assert first.xforward == {"NAME": "mx.sender.example", "ADDR": "192.0.2.7", "HELO": "odd+2Bhelo.example",
                              "PROTO": "ESMTP"}
    assert second.xforward == {} and down.connections == 1  # the pooled connection carried nothing over
    assert [row.client_addr for row in p.sink.rows] == ["192.0.2.7", "127.0.0.1"]
    # The rest of what the score log keeps of the client: the forwarded queue id (IDENT), HELO
    # and NAME for the first; for the second, only the HELO name the MTA itself gave spamd.
    assert [row.queue_id for row in p.sink.rows] == ["4dQ7x2Zc1Bz", ""]
    # The log line of each message names the queue id too, for a grep of both logs.
    lines = [r.getMessage() for r in caplog.records if r.name == "spamd.smtp"]
    lines = [line for line in lines if line.startswith("<x1@example.org> id=")]
    assert ["client=192.0.2.7 queue_id=4dQ7x2Zc1Bz from=" in line for line in lines] == [True, False], lines
    assert [row.extra for row in p.sink.rows] == [{"helo": "odd+helo.example", "client_name": "mx.sender.example"},
                                                  {"helo": "mta.example.org"}]


def test_rset_ends_the_forwarded_attributes_too(tmp_path: Path, capture, proxy):
    down = capture(xforward="NAME ADDR PROTO HELO")
    p = proxy(config(tmp_path, down.url), models=False)
    with mta(p.port) as client:
        assert client.docmd("XFORWARD", "ADDR=IPV6:2001:db8::7")[0] == 250
        assert client.rset()[0] == 250
        client.sendmail("alice@example.org", ["bob@example.net"], HAM)
        assert client.docmd("XFORWARD", "ADDR=IPV6:2001:db8::7")[0] == 250
        client.sendmail("alice@example.org", ["bob@example.net"], HAM)
    first, second = down.wait_for(2)
    assert (first.xforward, second.xforward) == ({}, {"ADDR": "IPV6:2001:db8::7"})
    assert [row.client_addr for row in p.sink.rows] == ["127.0.0.1", "2001:db8::7"]


def test_a_client_outside_xforward_hosts_is_not_offered_it_and_is_refused(tmp_path: Path, capture, proxy):
    down = capture(xforward="NAME ADDR PROTO HELO")
    p = proxy(config(tmp_path, down.url, hosts=("192.0.2.0/24",)), models=False)
    with mta(p.port) as client:
        assert not client.has_extn("xforward")
        code, text = client.docmd("XFORWARD", "ADDR=198.51.100.1")
        assert f"{code} {text.decode()}" == replies.XFORWARD_REFUSED
        client.sendmail("alice@example.org", ["bob@example.net"], HAM)
    assert down.wait_for(1)[0].xforward == {}
    assert p.sink.rows[0].client_addr == "127.0.0.1"


@pytest.mark.parametrize("before, arg, reply", [
    ([], "FOO=bar", replies.XFORWARD_SYNTAX),
    ([], "ADDR", replies.XFORWARD_SYNTAX),
    ([], "HELO=" + "h" * 256, replies.XFORWARD_SYNTAX),
    ([], "HELO=a+20b", replies.XFORWARD_SYNTAX),  # a space, once decoded
    (["MAIL FROM:<alice@example.org>"], "ADDR=192.0.2.7", replies.XFORWARD_IN_TRANSACTION),
])
def test_xforward_replies_as_postfix_does(before: list[str], arg: str, reply: str, tmp_path: Path, capture, proxy):
    down = capture(xforward="NAME ADDR PROTO HELO")
    p = proxy(config(tmp_path, down.url), models=False)
    with mta(p.port) as client:
        for line in before:
            assert client.docmd(line)[0] == 250
        code, text = client.docmd("XFORWARD", arg)
    assert f"{code} {text.decode()}".startswith(reply)


def test_xforward_needs_ehlo_first(tmp_path: Path, capture, proxy):
    down = capture()
    p = proxy(config(tmp_path, down.url), models=False)
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as client:
        assert client.docmd("XFORWARD", "ADDR=192.0.2.7")[0] == 503


def test_a_downstream_that_refuses_xforward_still_gets_the_message(tmp_path: Path, capture, proxy, caplog):
    down = capture(xforward="NAME ADDR")
    down.behaviour.xforward_reply = "550 5.7.0 Error: insufficient authorization"
    p = proxy(config(tmp_path, down.url), models=False)
    with caplog.at_level(logging.WARNING, logger="spamd.smtp"), mta(p.port) as client:
        assert client.docmd("XFORWARD", "ADDR=192.0.2.7")[0] == 250
        assert client.sendmail("alice@example.org", ["bob@example.net"], HAM) == {}
    [item] = down.wait_for(1)
    assert item.content.endswith(HAM) and item.xforward == {}
    assert p.sink.rows[0].client_addr == "192.0.2.7"
    assert "refused XFORWARD: 550" in caplog.text


@pytest.mark.parametrize(("arg", "expected"), [
    ("", ("127.0.0.1", "", {"helo": "mta.example.org"})),  # nothing forwarded: the MTA itself
    ("ADDR=IPV6:2001:db8::7 IDENT=4dQ7x2Zc1Bz", ("2001:db8::7", "4dQ7x2Zc1Bz", {})),  # not the MTA's HELO
    ("NAME=[UNAVAILABLE] ADDR=[unavailable] HELO=mx.example IDENT=[UNAVAILABLE]", ("", "", {"helo": "mx.example"})),
])
def test_what_the_score_log_keeps_of_the_client(arg: str, expected: tuple[str, str, dict[str, str]]) -> None:
    client = xforward.logged_client(xforward.parse(arg) if arg else {}, "127.0.0.1", "mta.example.org")
    assert (client.addr, client.queue_id, client.extra) == expected


def test_long_attributes_are_split_into_commands_smtp_allows() -> None:
    attrs = {"NAME": "n" * 250, "HELO": "h" * 250, "ADDR": "192.0.2.7"}
    cmds = xforward.commands(attrs, "NAME ADDR HELO")
    assert all(len(b"XFORWARD " + b" ".join(args) + b"\r\n") <= xforward.MAX_COMMAND for args in cmds)
    sent = dict(item.decode().split("=", 1) for args in cmds for item in args)
    assert sent == attrs and len(cmds) == 2


def test_a_bad_network_in_xforward_hosts_is_a_clear_error() -> None:
    assert xforward.networks(["10.1.2.3/8", "::1"])[0] == xforward.networks(["10.0.0.0/8"])[0]
    with pytest.raises(ConfigError, match=r"\[smtp\] xforward_hosts: .*10.0.0.0/33"):
        xforward.networks(["10.0.0.0/33"])


def test_a_transaction_refused_in_data_ends_there(tmp_path: Path, capture, proxy):
    # A message refused while it is read (552, too big) ends its transaction: the MTA may go on
    # with XFORWARD and its next message at once (no RSET), and the downstream connection the
    # refused one held is free for another client straight away (pool_size 1 here).
    down = capture(xforward="NAME ADDR PROTO HELO")
    cfg = config(tmp_path, down.url)
    cfg = replace(cfg, smtp=replace(cfg.smtp, max_message_size=10_000),
                  delivery=replace(cfg.delivery, pool_size=1, timeout=5.0))
    p = proxy(cfg, models=False)
    with mta(p.port) as client, mta(p.port) as other:
        client.mail("alice@example.org")
        client.rcpt("bob@example.net")
        assert client.data(HAM + (b"y" * 70 + b"\r\n") * 300)[0] == 552
        started = time.monotonic()
        assert other.sendmail("carol@example.org", ["bob@example.net"], HAM) == {}
        assert time.monotonic() - started < 2  # not after the 5 s delivery timeout
        assert client.docmd("XFORWARD", "ADDR=192.0.2.7")[0] == 250
        assert client.sendmail("alice@example.org", ["bob@example.net"], HAM) == {}
    first, second = down.wait_for(2)
    assert (first.mail_from, second.mail_from, second.xforward) == ("carol@example.org", "alice@example.org",
                                                                    {"ADDR": "192.0.2.7"})
