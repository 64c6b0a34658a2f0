"""Fault handling on loopback: the client always hears the truth, and nothing is lost or duplicated."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from spamd.scorer import RnnPending, Scorer, ScoringPolicy, Verdict
from spamd.smtp import replies
from tests.fixtures_models import TrainedTiny, fixture_mail
from tests.fixtures_smtp import LoopThread, past_received, proxy_config, send

HAM = b"Subject: lunch\r\nFrom: Carol <carol@example.org>\r\nMessage-ID: <m1@example.org>\r\n\r\nNoon?\r\n"


class RaisingScorer:
    """A model that crashes: the one fake here, because a crash cannot be made real on demand."""

    def read(self, raws: Sequence[bytes]) -> list[Verdict]:
        raise RuntimeError("model exploded")


class SlowScorer:
    def read(self, raws: Sequence[bytes]) -> list[Verdict]:
        time.sleep(1.0)
        raise AssertionError("should have timed out first")


class RaisingRnn(Scorer):
    """Real models whose RNN pass crashes (the CNN pass is real)."""

    def consult(self, pending: Sequence[RnnPending]) -> list[Verdict]:
        raise RuntimeError("GRU exploded")


class SlowRnn(Scorer):
    """Real models whose RNN pass takes a second (a GRU over a long message takes milliseconds)."""

    def consult(self, pending: Sequence[RnnPending]) -> list[Verdict]:
        time.sleep(1.0)
        return super().consult(pending)


def test_downstream_down_gives_451_then_the_retry_is_delivered_once(tiny_trained: TrainedTiny, tmp_path: Path,
                                                                    capture, proxy):
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    down.stop()
    with pytest.raises(smtplib.SMTPSenderRefused) as err:
        send(p.port, HAM)
    assert err.value.smtp_code == 451
    assert p.sink.rows == []  # nothing was accepted, so nothing was scored
    down.start()
    assert send(p.port, HAM) == {}
    assert len(down.wait_for(1)) == 1
    time.sleep(0.2)
    assert len(down.messages) == 1 and len(p.sink.rows) == 1


def test_a_pooled_connection_the_downstream_dropped_is_replaced(tiny_trained: TrainedTiny, tmp_path: Path, capture,
                                                                 proxy):
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    send(p.port, HAM)
    down.stop()  # drops the idle pooled connection
    down.start()
    send(p.port, HAM)
    assert len(down.wait_for(2)) == 2 and down.connections == 2


def test_a_refused_recipient_hears_the_downstreams_own_reply(tiny_trained: TrainedTiny, tmp_path: Path, capture,
                                                              proxy):
    down = capture()
    down.behaviour.refuse["nobody@example.net"] = "550 5.1.1 <nobody@example.net>: no such user"
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    refused = send(p.port, HAM, rcpts=("bob@example.net", "nobody@example.net"))
    assert refused == {"nobody@example.net": (550, b"5.1.1 <nobody@example.net>: no such user")}
    [item] = down.wait_for(1)
    assert item.rcpt_tos == ("bob@example.net",)
    assert p.sink.rows[0].recipients == ("bob@example.net",)


def test_all_recipients_refused_reaches_the_client(tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    down = capture()
    down.behaviour.refuse["nobody@example.net"] = "550 5.1.1 no such user"
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(p.port, HAM, rcpts=("nobody@example.net",))
    assert send(p.port, HAM) == {}  # the connection (and the pooled downstream one) stay usable
    assert len(down.wait_for(1)) == 1


@pytest.mark.parametrize("reply", ["451 4.3.0 Queue full, try later", "554 5.6.0 Content refused"])
def test_downstream_refusing_data_is_relayed_and_nothing_is_kept(reply: str, tiny_trained: TrainedTiny,
                                                                 tmp_path: Path, capture, proxy):
    down = capture()
    down.behaviour.data_reply = reply
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    with pytest.raises(smtplib.SMTPDataError) as err:
        send(p.port, HAM)
    assert err.value.smtp_code == int(reply[:3])
    assert p.sink.rows[0].action.endswith(f"delivery {reply[:3]}")
    down.behaviour.data_reply = None
    send(p.port, HAM)
    assert len(down.wait_for(1)) == 1
    time.sleep(0.2)
    assert len(down.messages) == 1


def test_oversize_is_refused_with_552_at_mail_when_size_is_declared(tiny_trained: TrainedTiny, tmp_path: Path,
                                                                     capture, proxy):
    down = capture()
    cfg = proxy_config(tiny_trained.models_dir, down.url, tmp_path)
    p = proxy(cfg.__class__(**{**cfg.__dict__, "smtp": cfg.smtp.__class__(
        **{**cfg.smtp.__dict__, "max_message_size": 10_000})}))
    big = HAM + b"x" * 20_000 + b"\r\n"
    with pytest.raises(smtplib.SMTPSenderRefused) as err:
        send(p.port, big)  # smtplib declares SIZE= because spamd advertises SIZE
    assert (err.value.smtp_code, err.value.smtp_error) == (552, replies.TOO_BIG[4:].encode())
    assert down.messages == [] and p.sink.rows == []


def test_oversize_without_size_gets_552_after_data_and_is_not_kept(tiny_trained: TrainedTiny, tmp_path: Path,
                                                                   capture, proxy):
    down = capture()
    cfg = proxy_config(tiny_trained.models_dir, down.url, tmp_path)
    p = proxy(cfg.__class__(**{**cfg.__dict__, "smtp": cfg.smtp.__class__(
        **{**cfg.smtp.__dict__, "max_message_size": 10_000})}))
    with smtplib.SMTP("127.0.0.1", p.port) as client:
        client.ehlo()
        client.mail("alice@example.org")  # no SIZE=: spamd learns the size while reading
        client.rcpt("bob@example.net")
        code, text = client.data(HAM + (b"y" * 70 + b"\r\n") * 300)
        assert (code, text.decode()) == (552, replies.TOO_BIG[4:])
        client.rset()
        assert client.sendmail("alice@example.org", ["bob@example.net"], HAM) == {}
    assert len(down.wait_for(1)) == 1
    assert [r.size for r in p.sink.rows] == [len(HAM)]


def test_a_model_that_raises_passes_mail_as_unknown(tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    p.run(lambda: setattr(p.daemon.batcher, "scorer", RaisingScorer()))
    send(p.port, HAM)
    content = down.wait_for(1)[0].content
    assert past_received(content).startswith(b"X-Spam-Status: Unknown\r\nX-Spam-Id: ")
    assert b"X-Spam-Flag" not in content and content.endswith(HAM)
    [row] = p.sink.rows
    assert (row.verdict, row.action, row.score) == ("unknown", "failed-open", None)
    assert "model exploded" in row.error


def test_a_model_that_raises_gives_451_when_configured(tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path, on_failure="tempfail"))
    p.run(lambda: setattr(p.daemon.batcher, "scorer", RaisingScorer()))
    with pytest.raises(smtplib.SMTPDataError) as err:
        send(p.port, HAM)
    assert err.value.smtp_code == 451
    assert down.messages == [] and p.sink.rows[0].action == "tempfailed"


def test_an_rnn_that_raises_passes_mail_as_unknown(tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    p.run(lambda: setattr(p.daemon.batcher, "scorer",
                          RaisingRnn(p.daemon.batcher.scorer.models, ScoringPolicy(rnn_rule="always"))))
    send(p.port, HAM)
    assert past_received(down.wait_for(1)[0].content).startswith(b"X-Spam-Status: Unknown\r\n")
    [row] = p.sink.rows
    assert (row.verdict, row.action) == ("unknown", "failed-open") and "GRU exploded" in row.error


def test_a_slow_rnn_pass_delays_only_the_message_it_reads(tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    # rnn_rule = long: only the long message goes to the RNN; the short ones sent while the
    # GRU works on it are answered at once, and the long one still gets its combined verdict.
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path))
    p.run(lambda: setattr(p.daemon.batcher, "scorer",
                          SlowRnn(p.daemon.batcher.scorer.models, ScoringPolicy(rnn_rule="long"))))
    long_mail = HAM.replace(b"Noon?", b"lunch at noon " * 400)
    done: dict[str, float] = {}
    started = time.monotonic()
    slow = threading.Thread(target=lambda: (send(p.port, long_mail), done.setdefault("long", time.monotonic())))
    slow.start()
    time.sleep(0.2)
    for _ in range(3):
        send(p.port, HAM)
    done["short"] = time.monotonic()
    slow.join(10)
    assert done["short"] - started < 0.8 < done["long"] - started
    rows = {row.size: row for row in p.sink.rows}
    assert rows[len(long_mail)].rnn_score is not None and rows[len(HAM)].rnn_score is None
    assert len(down.wait_for(4)) == 4


def test_scoring_timeout_fails_open(tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path, timeout=0.2))
    p.run(lambda: setattr(p.daemon.batcher, "scorer", SlowScorer()))
    started = time.monotonic()
    send(p.port, HAM)
    assert time.monotonic() - started < 0.9
    assert past_received(down.wait_for(1)[0].content).startswith(b"X-Spam-Status: Unknown\r\n")
    assert p.sink.rows[0].error == "timeout"


def test_no_usable_model_still_passes_mail_as_unknown(tmp_path: Path, capture, proxy):
    down = capture()
    p = proxy(proxy_config(tmp_path / "no-models", down.url, tmp_path))
    send(p.port, HAM)
    assert past_received(down.wait_for(1)[0].content).startswith(b"X-Spam-Status: Unknown\r\n")


def test_recipient_and_connection_limits(tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    down = capture()
    cfg = proxy_config(tiny_trained.models_dir, down.url, tmp_path)
    smtp = cfg.smtp.__class__(**{**cfg.smtp.__dict__, "max_recipients": 2, "max_connections": 1})
    p = proxy(cfg.__class__(**{**cfg.__dict__, "smtp": smtp}))
    with smtplib.SMTP("127.0.0.1", p.port) as first:
        refused = first.sendmail("a@example.org", ["r1@example.net", "r2@example.net", "r3@example.net"], HAM)
        assert refused == {"r3@example.net": (452, b"4.5.3 Too many recipients")}
        with pytest.raises(smtplib.SMTPConnectError) as err:
            smtplib.SMTP("127.0.0.1", p.port)
        assert err.value.smtp_code == 421
    assert down.wait_for(1)[0].rcpt_tos == ("r1@example.net", "r2@example.net")


def test_an_idle_client_is_dropped_and_the_downstream_connection_it_held_is_freed(
        tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    # One pooled downstream connection: while the idle client's transaction holds it, no other
    # message can go on; after its idle timeout, the next message must not wait for it.
    down = capture()
    cfg = proxy_config(tiny_trained.models_dir, down.url, tmp_path)
    smtp = cfg.smtp.__class__(**{**cfg.smtp.__dict__, "idle_timeout": 1.0})
    delivery = cfg.delivery.__class__(**{**cfg.delivery.__dict__, "pool_size": 1})
    p = proxy(cfg.__class__(**{**cfg.__dict__, "smtp": smtp, "delivery": delivery}))
    idle = smtplib.SMTP("127.0.0.1", p.port, timeout=30)
    idle.ehlo("idle.example.org")
    assert idle.mail("idle@example.org")[0] == 250 and idle.rcpt("bob@example.net")[0] == 250
    time.sleep(2.0)  # past the idle timeout, silent in mid-transaction
    assert idle.getreply() == (421, b"4.4.2 Error: timeout exceeded")  # said, as Postfix says it
    with pytest.raises(smtplib.SMTPServerDisconnected):  # and the connection closed
        idle.noop()
    started = time.monotonic()
    assert send(p.port, HAM) == {}
    assert time.monotonic() - started < 5  # not held up by the dropped transaction (delivery timeout 10 s)
    [got] = down.wait_for(1)
    assert got.mail_from == "alice@example.org" and got.content.endswith(HAM)
    time.sleep(0.3)
    assert len(down.messages) == 1  # nothing of the idle client's went on


@pytest.mark.parametrize("leaves", ["close", "shutdown"])
def test_a_client_gone_while_its_message_is_scored_frees_the_downstream_connection(leaves: str, tmp_path: Path,
                                                                                    capture, proxy):
    # aiosmtpd cancels the DATA hook at the client's EOF (a close, or a half-close), before it calls
    # session_closed. The transaction used to be forgotten without being dropped, its pool slot never
    # freed: with pool_size 1 every later MAIL waited out the delivery timeout and got 451.
    down = capture()
    cfg = proxy_config(tmp_path / "no-models", down.url, tmp_path)
    delivery = cfg.delivery.__class__(**{**cfg.delivery.__dict__, "pool_size": 1, "timeout": 3.0})
    p = proxy(cfg.__class__(**{**cfg.__dict__, "delivery": delivery}), models=False)
    p.run(lambda: setattr(p.daemon.batcher, "scorer", SlowScorer()))
    sock = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    f = sock.makefile("rb")
    assert _reply(f).startswith(b"220")
    for command in (b"EHLO gone.example.org", b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.net>", b"DATA"):
        sock.sendall(command + b"\r\n")
        assert _reply(f)[:1] in (b"2", b"3")
    sock.sendall(HAM + b".\r\n")
    time.sleep(0.3)  # being scored (SlowScorer takes a second)
    if leaves == "close":
        f.close()
        sock.close()
    else:
        sock.shutdown(socket.SHUT_WR)
    time.sleep(1.2)
    p.run(lambda: setattr(p.daemon.batcher, "scorer", None))  # no model: the next message passes as Unknown
    started = time.monotonic()
    assert send(p.port, HAM) == {}
    assert time.monotonic() - started < 2.5  # not the delivery timeout's 3 s and a 451
    [got] = down.wait_for(1)
    assert got.mail_from == "alice@example.org"
    time.sleep(0.3)
    assert len(down.messages) == 1  # nothing of the gone client's went on
    sock.close()


class RawDownstream:
    """A downstream speaking SMTP by hand, to give replies aiosmtpd cannot: 8-bit text, no code."""

    def __init__(self, rcpt_reply: bytes, data_reply: bytes) -> None:
        self.rcpt_reply, self.data_reply = rcpt_reply, data_reply
        self.messages: list[bytes] = []
        self._sessions: set[asyncio.Task[None]] = set()
        self._lt = LoopThread("raw-downstream")
        self.server = self._lt.call(asyncio.start_server(self._session, "127.0.0.1", 0))
        self.url = f"smtp://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await self._converse(reader, writer)
        finally:
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 raw.example.net ESMTP\r\n")
        while line := await reader.readline():
            command = line[:4].upper()
            if command == b"EHLO":
                writer.write(b"250-raw.example.net\r\n250 8BITMIME\r\n")
            elif command == b"RCPT":
                writer.write(self.rcpt_reply)
            elif command == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                self.messages.append(await reader.readuntil(b"\r\n.\r\n"))
                writer.write(self.data_reply)
            elif command == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        await writer.drain()

    async def _shutdown(self) -> None:
        self.server.close()
        for task in self._sessions:
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)

    def close(self) -> None:
        self._lt.call(self._shutdown())
        self._lt.close()


@pytest.fixture
def raw_downstream() -> Iterator[Callable[[bytes, bytes], RawDownstream]]:
    made: list[RawDownstream] = []

    def make(rcpt_reply: bytes = b"250 2.1.5 ok\r\n", data_reply: bytes = b"250 2.0.0 queued\r\n") -> RawDownstream:
        made.append(RawDownstream(rcpt_reply, data_reply))
        return made[-1]

    yield make
    for server in made:
        server.close()


def test_a_downstream_reply_in_8_bit_reaches_the_client_in_ascii(tmp_path: Path, raw_downstream, proxy):
    # aiosmtpd could not send the client a reply holding the downstream's 8-bit bytes (sendmail
    # echoes an address as written): the client heard "500 Error: (UnicodeEncodeError)" for a
    # message the downstream had taken, and an MTA bounces it.
    down = raw_downstream(b"250 2.1.5 <j\xfcrgen@example.net>... Recipient ok\r\n",
                          b"250 2.0.0 Ok: queued, r\xe9f\xe9rence 42\r\n")
    p = proxy(proxy_config(tmp_path / "no-models", down.url, tmp_path, enabled=False), models=False)
    with smtplib.SMTP("127.0.0.1", p.port, timeout=30) as client:
        client.ehlo("mta.example.org")
        assert client.mail("alice@example.org")[0] == 250
        assert client.rcpt("bob@example.net") == (250, b"2.1.5 <j?rgen@example.net>... Recipient ok")
        assert client.data(HAM) == (250, b"2.0.0 Ok: queued, r?f?rence 42")
    assert len(down.messages) == 1


def test_a_data_reply_without_a_code_is_a_451(tmp_path: Path, raw_downstream, proxy):
    # A reply that is not SMTP was relayed as "-1 Malformed SMTP response line"; the client must hear
    # a reply it knows, and one that keeps the message: the downstream's state is unknown.
    down = raw_downstream(data_reply=b"OK queued\r\n")
    p = proxy(proxy_config(tmp_path / "no-models", down.url, tmp_path, enabled=False), models=False)
    with pytest.raises(smtplib.SMTPDataError) as err:
        send(p.port, HAM)
    assert (err.value.smtp_code, err.value.smtp_error.decode()) == (451, replies.DOWNSTREAM_UNAVAILABLE[4:])


def test_a_pipelined_transaction_gets_each_reply_in_order(tmp_path: Path, capture, proxy):
    # RFC 2920: spamd offers PIPELINING, as Postfix's smtpd does, and Postfix's smtp client then sends
    # MAIL, the RCPTs and DATA in one write; a refused recipient among them stays refused alone.
    down = capture()
    down.behaviour.refuse["nobody@example.net"] = "550 5.1.1 <nobody@example.net>: Recipient address rejected"
    p = proxy(proxy_config(tmp_path / "no-models", down.url, tmp_path, enabled=False), models=False)
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as sock, sock.makefile("rb") as f:
        assert _reply(f).startswith(b"220")
        sock.sendall(b"EHLO mta.example.org\r\n")
        ehlo = [f.readline()]
        while ehlo[-1][3:4] == b"-":
            ehlo.append(f.readline())
        assert b"250-PIPELINING\r\n" in ehlo
        sock.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.net>\r\nRCPT TO:<nobody@example.net>\r\n"
                     b"RCPT TO:<carol@example.net>\r\nDATA\r\n")
        assert [_reply(f)[:3] for _ in range(5)] == [b"250", b"250", b"550", b"250", b"354"]
        sock.sendall(HAM + b".\r\nQUIT\r\n")
        assert _reply(f)[:3] == b"250" and _reply(f)[:3] == b"221"
    [got] = down.wait_for(1)
    assert got.rcpt_tos == ("bob@example.net", "carol@example.net") and got.content.endswith(HAM)


def _reply(f: Any) -> bytes:
    """One SMTP reply, its last line (a multi-line reply's lines have a dash after the code)."""
    while (line := f.readline())[3:4] == b"-":
        pass
    return line


def test_a_slow_client_is_timed_from_its_last_bytes_not_from_the_data_command(
        tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    # As Postfix's smtpd_timeout: a message arriving slowly over a slow line, whose whole DATA
    # lasts longer than the idle timeout, is taken; a client that stops sending in mid-DATA is not.
    down = capture()
    cfg = proxy_config(tiny_trained.models_dir, down.url, tmp_path)
    smtp = cfg.smtp.__class__(**{**cfg.smtp.__dict__, "idle_timeout": 2.0})
    p = proxy(cfg.__class__(**{**cfg.__dict__, "smtp": smtp}))
    body = HAM + b"".join(b"line %d of a long and slow message\r\n" % i for i in range(12))
    size = len(body) // 10 + 1
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    assert len(chunks) == 10  # 0.3 s apart: each well within the timeout, all ten beyond it
    for stall in (False, True):
        with socket.create_connection(("127.0.0.1", p.port), timeout=30) as sock, sock.makefile("rb") as f:
            assert _reply(f).startswith(b"220")
            for command in (b"EHLO slow.example.org", b"MAIL FROM:<slow@example.org>", b"RCPT TO:<bob@example.net>",
                            b"DATA"):
                sock.sendall(command + b"\r\n")
                assert _reply(f)[:1] in (b"2", b"3")
            for chunk in chunks[: 3 if stall else None]:
                time.sleep(0.3)
                sock.sendall(chunk)
            if stall:  # then silent, past the timeout
                assert _reply(f).startswith(b"421 4.4.2 ")  # cut off, and told why
                assert f.readline() == b""
            else:
                sock.sendall(b".\r\n")
                assert _reply(f).startswith(b"250 ")
                [got] = down.wait_for(1)
                assert got.content.endswith(body)
    time.sleep(0.3)
    assert len(down.messages) == 1


def test_a_client_waiting_for_spamds_answer_is_not_idle(tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    # Scoring takes twice the idle timeout here: the client waits for spamd, so spamd must not
    # drop it (it would retry a message that may already have gone on).
    down = capture()
    cfg = proxy_config(tiny_trained.models_dir, down.url, tmp_path)
    smtp = cfg.smtp.__class__(**{**cfg.smtp.__dict__, "idle_timeout": 0.5})
    p = proxy(cfg.__class__(**{**cfg.__dict__, "smtp": smtp}))
    p.run(lambda: setattr(p.daemon.batcher, "scorer",
                          SlowRnn(p.daemon.batcher.scorer.models, ScoringPolicy(rnn_rule="always"))))
    assert send(p.port, HAM) == {}
    [got] = down.wait_for(1)
    assert got.content.endswith(HAM) and b"\r\nX-Spam-Status: Unknown" not in b"\r\n" + got.content
    assert p.sink.rows[0].rnn_score is not None


def test_spam_fixture_is_flagged_and_logged(tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path, spam_threshold=0.0))
    send(p.port, fixture_mail("train", "spam")[0])
    assert b"X-Spam-Flag: YES\r\n" in down.wait_for(1)[0].content
    assert p.sink.rows[0].action == "tagged"


def test_scoring_switched_off_relays_everything(tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    down = capture()
    p = proxy(proxy_config(tiny_trained.models_dir, down.url, tmp_path, enabled=False, on_failure="tempfail"))
    send(p.port, HAM)
    assert past_received(down.wait_for(1)[0].content).startswith(b"X-Spam-Status: Unknown\r\n")
    assert (p.sink.rows[0].action, p.sink.rows[0].error) == ("unscored", "")
    assert p.daemon.batcher.scored == 0
