"""Mail → text: what the models read, and that no input can break or stall the parser."""

from __future__ import annotations

import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from spamd.features import TokenizerConfig, token_ids, tokens
from spamd.mail.headers import fingerprint, prepend_headers, strip_spam_headers
from spamd.mail.parse import parse

DATA = Path(__file__).parent / "data"

MULTIPART = (
    b"From: \"Cheap Meds\" <deals@pharma.example>\r\n"
    b"Subject: =?utf-8?B?QWJzb2x1dGVseSBmcmVl?=\r\n"
    b"X-Spam-Flag: YES\r\n"
    b"Message-ID: <abc@pharma.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
    b"--XX\r\nContent-Type: text/html; charset=iso-8859-1\r\n\r\n"
    b"<html><style>p{}</style><p>Caf\xe9 <a href='http://www.win.example/x'>click here</a></p></html>\r\n"
    b"--XX\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n\r\n"
    b"JVBERi0=\r\n--XX--\r\n"
)


def test_parse_reads_subject_sender_html_links_and_attachments() -> None:
    mail = parse(MULTIPART)
    assert mail.subject == "Absolutely free"
    assert (mail.from_name, mail.from_domain) == ("Cheap Meds", "pharma.example")
    assert "Café" in mail.html_text and "click here" in mail.html_text and "p{}" not in mail.html_text
    assert mail.link_domains == ("win.example",)
    assert mail.attachments == 1
    assert mail.html_only
    assert mail.message_id == "<abc@pharma.example>"


def test_own_headers_are_never_read() -> None:
    mail = parse(MULTIPART)
    assert all(not name.lower().startswith("x-spam-") for name, _ in mail.headers)
    assert "hdr:x-spam-flag" not in tokens(mail, TokenizerConfig())


def test_tokens_carry_markers_headers_subject_and_body_in_order() -> None:
    toks = tokens(parse(MULTIPART), TokenizerConfig())
    assert "html-only" in toks and "url:win.example" in toks and "attach:1" in toks
    assert "subj:absolutely" in toks and "fromdom:pharma.example" in toks
    assert toks.index("subj:free") < toks.index("<body>") < toks.index("click")


def test_token_ids_are_stable_and_bounded() -> None:
    cfg = TokenizerConfig(buckets=1000)
    ids = token_ids(parse(MULTIPART), cfg)
    assert ids == token_ids(parse(MULTIPART), cfg)  # no per-process hash seed
    assert all(1 <= i < 1000 for i in ids)
    long_plain = b"Subject: long\r\n\r\n" + b"word " * 5000
    assert len(token_ids(parse(long_plain), TokenizerConfig(max_tokens=300))) == 300


def test_strip_and_prepend_keep_the_original_bytes() -> None:
    stripped = strip_spam_headers(MULTIPART)
    assert b"X-Spam-Flag" not in stripped
    assert stripped == MULTIPART.replace(b"X-Spam-Flag: YES\r\n", b"")
    tagged = prepend_headers(stripped, [("X-Spam-Flag", "YES")])
    assert tagged == b"X-Spam-Flag: YES\r\n" + stripped
    assert fingerprint(tagged) == fingerprint(stripped) == fingerprint(MULTIPART)


def test_folded_forged_spam_header_is_removed_whole() -> None:
    raw = b"X-Spam-Status: No,\n\tscore=-100\nSubject: hi\n\nbody\n"
    assert strip_spam_headers(raw) == b"Subject: hi\n\nbody\n"


def test_every_malformed_fixture_parses_quickly_with_text() -> None:
    for path in sorted((DATA / "malformed").iterdir()):
        raw = path.read_bytes()
        started = time.perf_counter()
        ids = token_ids(parse(raw), TokenizerConfig())
        elapsed = time.perf_counter() - started
        assert elapsed < 0.05, f"{path.name} took {elapsed * 1000:.0f} ms"
        assert ids, path.name


def test_pathological_content_type_is_read_in_time() -> None:
    raw = (DATA / "malformed" / "pathological-content-type.eml").read_bytes()
    started = time.perf_counter()
    mail = parse(raw)
    assert time.perf_counter() - started < 0.05
    assert mail.html_text.strip()  # the body is still read


def test_broken_charset_and_bad_base64_are_read_leniently() -> None:
    mail = parse((DATA / "malformed" / "broken-charset.eml").read_bytes())
    assert "Hello" in mail.text
    parse((DATA / "malformed" / "broken-mime.eml").read_bytes())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    token_ids(parse(raw), TokenizerConfig())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"Subject: ", b"Content-Type: multipart/mixed; boundary=", b"\r\n", b"\n",
                                 b"--", b"=?utf-8?q?", b"?=", b"charset=", b"\xff", b"<a href=", b">", b"base64",
                                 b"Content-Transfer-Encoding: ", b"quoted-printable", b"=E9", b" ", b"x"]),
                max_size=80))
def test_mime_shaped_junk_never_raises(chunks: list[bytes]) -> None:
    token_ids(parse(b"".join(chunks)), TokenizerConfig())
