"""Hostile mail: the CPU that reading and scoring each crafted message costs, against a typical one.

    python -m bench.hostile [--model VERSION] [--config config.toml] [--json bench/out/hostile.json]

Scoring runs in one thread per worker, and a message that is slow to parse delays every message
batched behind it: past `[scoring] timeout` they pass unscored, as Unknown. A message that makes
parsing raise passes as Unknown itself. Each input below once did one or the other (the README's
"Hostile mail" says which, and how long each took); this script times, with `time.process_time`,
the steps a message goes through in spamd: the event loop's (removing X-Spam-* headers, reading the
Message-ID), `parse`, `token_ids`, and the whole `Scorer.score` with the shipped models. No corpus
is needed: the inputs are generated.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from bench.corpus import machine
from spamd.cli.common import load_active
from spamd.config import load_config
from spamd.features import token_ids
from spamd.mail.headers import strip_spam_headers
from spamd.mail.parse import parse
from spamd.scorer import Scorer, ScoringPolicy
from spamd.smtp.actions import message_id


def _nested_multipart(depth: int, lines: int) -> bytes:
    head = b"From: a@example.org\nSubject: nested\nContent-Type: multipart/mixed; boundary=b0\n\n"
    opens = b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(depth))
    return head + opens + b"--b%d\n\n" % depth + b"cheap pills\n" + b"x\n" * lines


def _html_parts(markup: bytes, parts: int) -> bytes:
    one = b"--b\nContent-Type: text/html\n\n" + markup + b"\n"
    return b"From: a@example.org\nContent-Type: multipart/mixed; boundary=b\n\n" + one * parts + b"--b--\n"


HOSTILE: dict[str, Callable[[], bytes]] = {
    "typical: a 6 kB HTML newsletter": lambda: (
        b"From: News <news@example.org>\nSubject: This week\nContent-Type: text/html\n\n"
        + b"<html><body>" + b"<p>An item of news, <a href='http://example.org/a'>read more</a></p>\n" * 80
        + b"</body></html>\n"),
    "X-Spam- header continued over 1.3 MB of lines": lambda: b"Subject: x\r\n x-spam-\r\n" + b" a\r\n" * 320_000,
    "a header field continued over 800 kB of lines": lambda: b"Subject: x\n" + b" \n" * 400_000 + b"\nbody\n",
    "100,000 one-line header fields": lambda: b"".join(b"X%d: y\n" % i for i in range(100_000)) + b"\nbody\n",
    "message/rfc822 nested 2,000 deep": lambda: (
        b"From: a@example.org\n" + b"Content-Type: message/rfc822\n\n" * 2000 + b"\ncheap pills\n"),
    "multipart nested 2,000 deep": lambda: _nested_multipart(2000, 0),
    "multipart nested 700 deep over 100,000 lines": lambda: _nested_multipart(700, 100_000),
    "100,000 empty MIME parts": lambda: (
        b"From: a@example.org\nContent-Type: multipart/mixed; boundary=b\n\n" + b"--b\n\n" * 100_000 + b"--b--\n"),
    "a part header of 120 kB with an open quote": lambda: (
        b"From: a@example.org\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\ncheap pills\n--b\n"
        b'Content-Type: text/plain; name="' + b";" * 120_000 + b"\n\nhidden\n--b--\n"),
    "a broken RFC 2231 filename (name*=idna''x)": lambda: (
        b"From: a@example.org\nContent-Type: text/html; name*=idna''x\n\n<p>cheap pills</p>\n"),
    "three 128 kB parts in charset=punycode": lambda: (
        b"From: a@example.org\nContent-Type: multipart/mixed; boundary=b\n\n"
        + (b"--b\nContent-Type: text/plain; charset=punycode\n\n" + b"a" * 131_072 + b"\n") * 3 + b"--b--\n"),
    "HTML: 64 Ki characters of '<!--', seven parts": lambda: _html_parts(b"<!--" * 16384, 7),
    "HTML: 64 Ki characters of '<title>'": lambda: _html_parts(b"<title>" * 9362, 1),
    "HTML: 64 Ki characters of '<p'": lambda: _html_parts(b"<p" * 32768, 1),
}


def cpu_ms(fn: Callable[[], object]) -> tuple[float, str]:
    started = time.process_time()
    try:
        fn()
        error = ""
    except Exception as exc:  # noqa: BLE001 - reported: a raise is what this bench looks for
        error = f"{type(exc).__name__}: {str(exc)[:80]}"
    return round((time.process_time() - started) * 1000, 1), error


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--config", default=None)
    ap.add_argument("--json", default="bench/out/hostile.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = load_active(load_config(args.config), args.model)
    scorer = Scorer(models, ScoringPolicy(rnn_rule="uncertain"))
    results = []
    for name, make in HOSTILE.items():
        raw = make()
        loop_ms, loop_err = cpu_ms(partial(lambda r: message_id(strip_spam_headers(r)), raw))
        parse_ms, parse_err = cpu_ms(partial(parse, raw))
        tokens_ms, _ = cpu_ms(partial(lambda r: token_ids(parse(r), models.tokenizer), raw))
        score_ms, score_err = cpu_ms(partial(scorer.score, [raw]))
        row = {"input": name, "bytes": len(raw), "event_loop_ms": loop_ms, "parse_ms": parse_ms,
               "parse_and_tokens_ms": tokens_ms, "score_ms": score_ms, "error": loop_err or parse_err or score_err}
        results.append(row)
        print(f"{name:52s} {len(raw):>9,d} B  loop {loop_ms:7.1f}  parse {parse_ms:7.1f}  "
              f"+tokens {tokens_ms:7.1f}  score {score_ms:7.1f} ms  {row['error']}", flush=True)
    out = {"machine": machine(), "model": models.version, "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
