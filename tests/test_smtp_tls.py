"""TLS to the downstream ([delivery] tls) on loopback: what each level delivers, and what it refuses with 451.

Certificates come from a CA made for the test run (trustme); scoring is off, as TLS is all
that is tested here. A 451 comes at MAIL, when the connection is opened, so nothing was sent.
"""

from __future__ import annotations

import logging
import smtplib
import socketserver
import ssl
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from spamd.config import Config, TlsLevel
from spamd.errors import ConfigError
from spamd.smtp import replies
from spamd.smtp.forward import open_downstream
from tests.fixtures_smtp import proxy_config, send, server_tls

HAM = b"Subject: lunch\r\nFrom: Carol <carol@example.org>\r\nMessage-ID: <t1@example.org>\r\n\r\nNoon?\r\n"


def tls_config(tmp_path: Path, url: str, tls: TlsLevel, ca_file: str = "") -> Config:
    cfg = proxy_config(tmp_path / "no-models", url, tmp_path, enabled=False)
    return replace(cfg, delivery=replace(cfg.delivery, tls=tls, tls_ca_file=ca_file))


def spamd_log(caplog: pytest.LogCaptureFixture) -> str:
    """What spamd logged (the downstream, aiosmtpd, logs its side of a failed handshake too)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "spamd.smtp")


def refused_at_mail(port: int) -> str:
    """The reply the client got at MAIL, as one line."""
    with pytest.raises(smtplib.SMTPSenderRefused) as err:
        send(port, HAM)
    return f"{err.value.smtp_code} {err.value.smtp_error.decode()}"


@pytest.mark.parametrize("level, offers_starttls, encrypted", [
    ("none", True, False),  # the default never asks, even when offered
    ("may", False, False),
    ("may", True, True),  # the certificate is from an unknown CA: "may" does not check it
    ("encrypt", True, True),  # nor does "encrypt"
])
def test_unverified_levels_deliver(level: TlsLevel, offers_starttls: bool, encrypted: bool, tls_ca: trustme.CA,
                                   tmp_path: Path, capture, proxy):
    down = capture(server_tls(tls_ca, "127.0.0.1") if offers_starttls else None)
    p = proxy(tls_config(tmp_path, down.url, level), models=False)
    assert send(p.port, HAM) == {}
    [item] = down.wait_for(1)
    assert (item.tls is not None) == encrypted and item.content.endswith(HAM)


def test_verify_with_the_ca_file_delivers_over_tls_negotiated_once_per_connection(tls_ca: trustme.CA,
                                                                                  tmp_path: Path, capture, proxy):
    down = capture(server_tls(tls_ca, "127.0.0.1"))
    tls_ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    p = proxy(tls_config(tmp_path, down.url, "verify", "ca.pem"), models=False)  # relative to the config's dir
    send(p.port, HAM)
    send(p.port, HAM)
    assert [item.tls is not None for item in down.wait_for(2)] == [True, True]
    assert down.connections == 1  # the second message reused the encrypted connection


@pytest.mark.parametrize("ca_file, names, reason", [
    ("", ("127.0.0.1",), "certificate verify failed"),  # the system's CAs do not know the test CA
    ("ca.pem", ("mail.example.org",), "mismatch"),  # a trusted CA, but a certificate for another host
])
def test_verify_refuses_a_certificate_it_cannot_check_with_451(ca_file: str, names: tuple[str, ...],
                                                                reason: str, tls_ca: trustme.CA, tmp_path: Path,
                                                                capture, proxy, caplog):
    down = capture(server_tls(tls_ca, *names))
    tls_ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    p = proxy(tls_config(tmp_path, down.url, "verify", ca_file), models=False)
    with caplog.at_level(logging.ERROR, logger="spamd.smtp"):
        assert refused_at_mail(p.port) == replies.DOWNSTREAM_TLS_FAILED
    assert down.messages == [] and down.data_started == 0
    assert reason in spamd_log(caplog) and 'tls = "verify"' in spamd_log(caplog)


@pytest.mark.parametrize("level", ["encrypt", "verify"])
def test_required_tls_not_offered_answers_451(level: TlsLevel, tmp_path: Path, capture, proxy, caplog):
    down = capture()  # plain: no STARTTLS in its EHLO reply
    p = proxy(tls_config(tmp_path, down.url, level), models=False)
    with caplog.at_level(logging.ERROR, logger="spamd.smtp"):
        assert refused_at_mail(p.port) == replies.DOWNSTREAM_NO_TLS
    assert down.messages == [] and down.data_started == 0
    assert f'offers no STARTTLS ([delivery] tls = "{level}")' in spamd_log(caplog)


class BrokenStarttls(socketserver.ThreadingTCPServer):
    """A downstream that offers STARTTLS and then fails it: it answers STARTTLS with `answer`, and
    after a 220 sends bytes that are not TLS. It counts the commands it is sent in plain after that."""

    daemon_threads = True

    def __init__(self, answer: bytes) -> None:
        self.answer, self.after_starttls = answer, []

        class Handler(socketserver.StreamRequestHandler):
            def handle(h) -> None:
                h.wfile.write(b"220 broken ESMTP\r\n")
                started = False
                for line in h.rfile:
                    if started:
                        self.after_starttls.append(line)
                    word = line.split()[0].upper() if line.split() else b""
                    if word == b"EHLO":
                        h.wfile.write(b"250-broken\r\n250 STARTTLS\r\n")
                    elif word == b"STARTTLS":
                        started = True
                        h.wfile.write(self.answer + (b"this is not TLS\r\n" if self.answer.startswith(b"220") else b""))
                    elif word == b"QUIT":
                        h.wfile.write(b"221 bye\r\n")
                        return
                    else:
                        h.wfile.write(b"250 ok\r\n")

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.server_address[1]}"


@pytest.mark.parametrize("answer", [b"220 2.0.0 go ahead\r\n", b"454 4.7.0 TLS not available now\r\n"],
                         ids=["handshake-fails", "starttls-refused"])
def test_may_answers_451_when_an_offered_starttls_fails(answer: bytes, tmp_path: Path, proxy, caplog):
    # "may" encrypts when offered; when what was offered then fails, it answers 451 (the client
    # retries) and sends nothing in plain on that connection.
    down = BrokenStarttls(answer)
    try:
        p = proxy(tls_config(tmp_path, down.url, "may"), models=False)
        with caplog.at_level(logging.ERROR, logger="spamd.smtp"):
            assert refused_at_mail(p.port) == replies.DOWNSTREAM_TLS_FAILED
    finally:
        down.shutdown()
        down.server_close()
    assert not any(line.upper().startswith((b"MAIL", b"RCPT", b"DATA")) for line in down.after_starttls)
    assert 'STARTTLS failed' in spamd_log(caplog) and '([delivery] tls = "may")' in spamd_log(caplog)


@pytest.mark.parametrize("level, trusted", [("verify", True), ("encrypt", False)])
def test_smtps_delivers_over_implicit_tls(level: TlsLevel, trusted: bool, tls_ca: trustme.CA, tmp_path: Path,
                                          capture, proxy):
    down = capture(server_tls(tls_ca, "127.0.0.1"), implicit=True)
    tls_ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    p = proxy(tls_config(tmp_path, down.url, level, "ca.pem" if trusted else ""), models=False)
    send(p.port, HAM)
    assert down.wait_for(1)[0].tls is not None


def test_smtps_refuses_an_unverified_certificate_with_451(tls_ca: trustme.CA, tmp_path: Path, capture, proxy,
                                                          caplog):
    down = capture(server_tls(tls_ca, "127.0.0.1"), implicit=True)
    p = proxy(tls_config(tmp_path, down.url, "verify"), models=False)
    with caplog.at_level(logging.ERROR, logger="spamd.smtp"):
        assert refused_at_mail(p.port) == replies.DOWNSTREAM_TLS_FAILED
    assert down.messages == [] and "TLS handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED]" in spamd_log(caplog)


def test_closing_the_pool_closes_tls_connections_at_once(tls_ca: trustme.CA, tmp_path: Path, capture, proxy):
    # A TLS connection closed gently waits for the downstream's close_notify, on an event loop
    # that stops right after: its socket would be left open (a ResourceWarning at exit).
    down = capture(server_tls(tls_ca, "127.0.0.1"))
    p = proxy(tls_config(tmp_path, down.url, "encrypt"), models=False)
    send(p.port, HAM)
    downstream = p.daemon.downstream

    async def close() -> list[int]:
        sockets = [client.get_transport_info("socket") for client in downstream._idle]
        await downstream.close()
        return [sock.fileno() for sock in sockets]

    assert p.call(close()) == [-1]


@pytest.mark.parametrize("url, tls, ca_file, message", [
    ("smtps://127.0.0.1:465", "none", "", 'needs tls = "encrypt" or "verify"'),
    ("smtps://127.0.0.1:465", "may", "", 'needs tls = "encrypt" or "verify"'),
    ("smtp://127.0.0.1:25", "may", "ca.pem", 'read only with tls = "verify"'),
    ("smtp://127.0.0.1:25", "verify", "missing.pem", "missing.pem"),
    ("smtp://127.0.0.1:25", "verify", "junk.pem", "junk.pem"),
    ("smtps://127.0.0.1", "verify", "", "must look like smtps://host:port"),
])
def test_tls_settings_that_cannot_work_stop_spamd_at_start(url: str, tls: TlsLevel, ca_file: str, message: str,
                                                          tls_ca: trustme.CA, tmp_path: Path):
    tls_ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=message):
        open_downstream(tls_config(tmp_path, url, tls, ca_file))


# ------------------------------------------------------------------ STARTTLS from the MTA to spamd


def listener_config(tmp_path: Path, url: str, ca: trustme.CA, require: bool = False) -> Config:
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "spamd.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "spamd.pem"))
    cfg = proxy_config(tmp_path / "no-models", url, tmp_path, enabled=False)
    smtp = replace(cfg.smtp, tls_cert_file="spamd.pem", tls_key_file="spamd.key", require_tls=require)  # relative
    return replace(cfg, smtp=smtp)


def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.mark.parametrize("require", [False, True])
def test_an_mta_can_send_to_spamd_over_starttls(require: bool, tls_ca: trustme.CA, tmp_path: Path, capture, proxy):
    down = capture()
    p = proxy(listener_config(tmp_path, down.url, tls_ca, require), models=False)
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as client:
        client.ehlo("mta.example.org")
        assert client.has_extn("starttls")
        assert client.starttls(context=client_tls(tls_ca))[0] == 220
        client.ehlo("mta.example.org")
        assert not client.has_extn("starttls")  # not offered twice
        # spamd authenticates no one: an MTA set to use AUTH where offered must not be offered a
        # login that always fails (aiosmtpd offers LOGIN and PLAIN over TLS by default).
        assert not client.has_extn("auth")
        assert client.sendmail("alice@example.org", ["bob@example.net"], HAM) == {}
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]
    [item] = down.wait_for(1)
    assert item.content.endswith(HAM) and len(p.sink.rows) == 1
    assert b" (spamd) with ESMTPS id " in item.content  # the Received line says the hop was encrypted (RFC 3848)


def test_require_tls_refuses_mail_in_plain(tls_ca: trustme.CA, tmp_path: Path, capture, proxy):
    down = capture()
    p = proxy(listener_config(tmp_path, down.url, tls_ca, require=True), models=False)
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as client:
        client.ehlo("mta.example.org")
        assert client.docmd("MAIL", "FROM:<alice@example.org>")[0] == 530
    assert down.messages == []


def test_starttls_in_mid_transaction_leaves_nothing_open(tls_ca: trustme.CA, tmp_path: Path, capture, proxy):
    # The transaction opened before STARTTLS is gone after it (RFC 3207): a drain does not wait for it.
    down = capture()
    p = proxy(listener_config(tmp_path, down.url, tls_ca), models=False)
    client = smtplib.SMTP("127.0.0.1", p.port, timeout=30)
    client.ehlo("mta.example.org")
    assert client.docmd("MAIL", "FROM:<alice@example.org>")[0] == 250
    client.starttls(context=client_tls(tls_ca))
    client.quit()
    started = time.monotonic()
    p.stop()  # drain_timeout is 10 s: an orphaned transaction would hold it that long
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("cert, key, require, message", [
    ("spamd.pem", "", False, "go together"),
    ("", "", True, "require_tls needs"),
    ("missing.pem", "spamd.key", False, "tls_cert_file .*missing.pem"),
    ("spamd.key", "spamd.key", False, "tls_cert_file"),  # a key is not a certificate
])
def test_listener_tls_settings_that_cannot_work_stop_spamd_at_start(cert: str, key: str, require: bool,
                                                                     message: str, tls_ca: trustme.CA,
                                                                     tmp_path: Path, proxy):
    cfg = listener_config(tmp_path, "maildir:Maildir", tls_ca)
    cfg = replace(cfg, smtp=replace(cfg.smtp, tls_cert_file=cert, tls_key_file=key, require_tls=require))
    with pytest.raises(ConfigError, match=message):
        proxy(cfg, models=False)
