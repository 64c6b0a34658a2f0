"""`spamd serve` as a real process: SIGTERM drains in-flight mail, SIGHUP reloads, rows land in SQL."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from spamd import modelstore
from spamd.config import Config
from spamd.nets.cnn import FusedCNN, TableCNN
from spamd.smtp import server
from spamd.smtp.server import needs_restart
from tests.fixtures_models import TrainedTiny
from tests.fixtures_smtp import CaptureServer, proxy_config, send

REPO = Path(__file__).resolve().parents[1]

HAM = b"Subject: notes\r\nFrom: Dan <dan@example.org>\r\nMessage-ID: <n%d@example.org>\r\n\r\nSee attached.\r\n"


def tiny_and_starter(tiny_trained: TrainedTiny, tmp_path: Path) -> tuple[Path, str]:
    """A models directory with the tiny version active and the full-size starter beside it."""
    models_dir = tmp_path / "models"
    shutil.copytree(tiny_trained.models_dir, models_dir)
    starter = modelstore.active_version(REPO / "models")
    shutil.copytree(REPO / "models" / starter, models_dir / starter)
    return models_dir, starter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path: Path, models_dir: Path, down: CaptureServer, port: int, workers: int,
                 spam_threshold: str = "false") -> Path:
    path = tmp_path / "spamd.toml"
    path.write_text(f"""
[smtp]
listen = "127.0.0.1:{port}"
workers = {workers}
drain_timeout = 20.0
[delivery]
url = "{down.url}"
[scoring]
models_dir = "{models_dir}"
spam_threshold = {spam_threshold}
[database]
url = "sqlite:///spamd.db"
[logs]
spool = "spool.jsonl"
""")
    return path


def start_serve(config: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "spamd", "-v", "serve", "--config", str(config)],
                            cwd=config.parent, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"220"):
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("spamd serve did not start listening")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err.decode()


def sql_rows(tmp_path: Path) -> list[tuple[str, str, str]]:
    engine = create_engine(f"sqlite:///{tmp_path / 'spamd.db'}")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, message_id, action FROM score_logs ORDER BY id")).all()
    engine.dispose()
    return [tuple(r) for r in rows]


@pytest.mark.slow
def test_sigterm_delivers_every_message_in_flight(tiny_trained: TrainedTiny, tmp_path: Path, capture):
    down = capture()
    down.behaviour.data_delay = 1.5  # every message is still in flight when SIGTERM comes
    port = free_port()
    proc = start_serve(write_config(tmp_path, tiny_trained.models_dir, down, port, workers=2), port)
    results: dict[int, object] = {}

    def client(i: int) -> None:
        try:
            results[i] = send(port, HAM % i)
        except Exception as exc:  # noqa: BLE001 - recorded, then asserted on
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while down.data_started < len(threads) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert down.data_started == len(threads)
    code, err = stop(proc)
    for t in threads:
        t.join(30)
    assert results == {i: {} for i in range(len(threads))}, err  # every client heard 250
    assert sorted(m.content.split(b"Message-ID: ")[1][:16] for m in down.messages) == sorted(
        (b"<n%d@example.org>" % i)[:16] for i in range(len(threads)))
    assert code == 0, err
    assert "draining" in err
    assert len(sql_rows(tmp_path)) == len(threads)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.slow
def test_serve_logs_to_sql_and_sighup_reloads_config(tiny_trained: TrainedTiny, tmp_path: Path, capture):
    down = capture()
    port = free_port()
    config = write_config(tmp_path, tiny_trained.models_dir, down, port, workers=1, spam_threshold="1.0")
    proc = start_serve(config, port)
    try:
        send(port, HAM % 1)
        write_config(tmp_path, tiny_trained.models_dir, down, port, workers=1, spam_threshold="1e-9")
        config.write_text(config.read_text().replace("drain_timeout = 20.0", "drain_timeout = 25.0"))
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait until the reload took effect
            send(port, HAM % 2)
            if b"X-Spam-Flag: YES" in down.wait_for(len(down.messages))[-1].content:
                break
            time.sleep(0.2)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert b"X-Spam-Flag: NO" in down.messages[0].content
    assert b"X-Spam-Flag: YES" in down.messages[-1].content
    rows = sql_rows(tmp_path)
    assert len(rows) == len(down.messages)
    first_id = down.messages[0].content.split(b"X-Spam-Id: ")[1][:20].decode()
    assert (first_id, "<n1@example.org>", "passed") in rows
    # The threshold was applied; the drain timeout waits for a restart, and the log says so.
    [said] = [line for line in err.splitlines() if "will take effect only when spamd restarts" in line]
    assert "reload: [smtp] drain_timeout changed" in said


def test_a_reload_names_the_settings_that_wait_for_a_restart():
    base = Config()
    later = replace(base, smtp=replace(base.smtp, idle_timeout=30.0), delivery=replace(base.delivery, url="smtp://mx:25"),
                    scoring=replace(base.scoring, spam_threshold=0.9, batch_max=8, threads=2),
                    base_dir=base.base_dir / "elsewhere")
    assert needs_restart(base, later) == ["[smtp] idle_timeout", "[delivery] url", "[scoring] threads"]
    assert needs_restart(base, replace(base, scoring=replace(base.scoring, rnn_rule="never"))) == []


def test_a_reload_applies_the_batch_settings(tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    down = capture()
    cfg = proxy_config(tiny_trained.models_dir, down.url, tmp_path)
    p = proxy(cfg)
    p.call(p.daemon.reload(replace(cfg, scoring=replace(cfg.scoring, batch_max=4, batch_wait_ms=3.0))))
    assert (p.daemon.batcher.max_batch, p.daemon.batcher.wait_s) == (4, 0.003)
    send(p.port, HAM % 9)
    assert len(down.wait_for(1)) == 1


def test_a_reload_applies_cnn_table_and_builds_the_scorer_off_the_event_loop(
        tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy, monkeypatch: pytest.MonkeyPatch):
    # Building the CNN's table takes 0.6 s for the starter (bench/speed): on the event loop, every
    # connection of the worker would wait for it at each reload.
    down = capture()
    cfg = proxy_config(tiny_trained.models_dir, down.url, tmp_path, cnn_table=False)
    p = proxy(cfg)
    assert isinstance(p.daemon.batcher.scorer.cnn, FusedCNN)
    built_on: list[str] = []
    make_scorer = server.make_scorer

    def recording(*args: object) -> object:
        built_on.append(threading.current_thread().name)
        return make_scorer(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(server, "make_scorer", recording)
    p.call(p.daemon.reload(replace(cfg, scoring=replace(cfg.scoring, cnn_table=True))))
    assert isinstance(p.daemon.batcher.scorer.cnn, TableCNN)
    assert built_on and p.run(lambda: threading.current_thread().name) not in built_on
    send(p.port, HAM % 12)
    content = down.wait_for(1)[0].content
    assert b"X-Spam-Status: " in content and b"X-Spam-Status: Unknown" not in content


def test_a_reload_keeps_the_cnn_table_while_the_cnn_stays_the_same(tiny_trained: TrainedTiny, tmp_path: Path,
                                                                   capture, proxy):
    # A SIGHUP for a config change reloads the same version: building its table again would cost
    # the CPU and, meanwhile, a second 528 MiB table in each worker (for the starter).
    models_dir, starter = tiny_and_starter(tiny_trained, tmp_path)
    down = capture()
    cfg = proxy_config(models_dir, down.url, tmp_path)
    p = proxy(cfg)
    table = p.daemon.batcher.scorer.cnn
    assert isinstance(table, TableCNN)
    tagged = replace(cfg, scoring=replace(cfg.scoring, subject_tag="[SPAM] "))
    p.call(p.daemon.reload(tagged))
    assert p.daemon.batcher.scorer.cnn is table and p.daemon.handler.policy.subject_tag == "[SPAM] "
    p.call(p.daemon.reload(tagged, version=starter))  # other weights: a table of their own
    assert isinstance(p.daemon.batcher.scorer.cnn, TableCNN) and p.daemon.batcher.scorer.cnn is not table
    assert p.daemon.batcher.scorer.cnn.cfg == p.daemon.batcher.scorer.models.cnn.cfg != table.cfg
    p.call(p.daemon.reload(replace(tagged, scoring=replace(tagged.scoring, cnn_table=False)), version=starter))
    assert isinstance(p.daemon.batcher.scorer.cnn, FusedCNN)
    send(p.port, HAM % 15)
    assert b"X-Spam-Status: Unknown" not in down.wait_for(1)[0].content


def test_a_reload_frees_the_replaced_scorer(tiny_trained: TrainedTiny, tmp_path: Path, capture, proxy):
    # The RNN task kept the last scorer it consulted until the RNN's next message: after a reload,
    # the replaced models and their 528 MiB CNN table stayed for as long as no message went to it.
    down = capture()
    cfg = proxy_config(tiny_trained.models_dir, down.url, tmp_path, rnn_rule="always")
    p = proxy(cfg)
    send(p.port, HAM % 13)  # consulted by the RNN
    assert b"rnn=" in down.wait_for(1)[0].content
    old = weakref.ref(p.daemon.batcher.scorer)
    p.call(p.daemon.reload(replace(cfg, scoring=replace(cfg.scoring, rnn_rule="never"))))
    send(p.port, HAM % 14)
    assert len(down.wait_for(2)) == 2
    p.run(gc.collect)
    assert old() is None


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_sighup_while_spamd_starts_is_a_reload_once_it_is_up(workers: int, tiny_trained: TrainedTiny,
                                                              tmp_path: Path, capture):
    # SIGHUP's default action ends a process, and spamd set its own handler only once its models were
    # loaded: a `systemctl reload` just after a start killed it (with 2 workers, the supervisor then
    # stopped the whole daemon as one that "could not start").
    down = capture()
    port = free_port()
    config = write_config(tmp_path, tiny_trained.models_dir, down, port, workers=workers)
    proc = subprocess.Popen([sys.executable, "-m", "spamd", "-v", "serve", "--config", str(config)],
                            cwd=config.parent, stderr=subprocess.PIPE)
    try:
        for delay in (0.8, 0.8, 0.8):  # while the supervisor, then the workers, import torch and load models
            time.sleep(delay)
            proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                assert send(port, HAM % 11) == {}
                break
            except OSError:
                time.sleep(0.2)
        assert len(down.wait_for(1)) == 1
        time.sleep(1.0)  # each worker's deferred reload
        code, err = stop(proc)
    finally:
        proc.kill()
    assert code == 0, err
    assert "reloaded: model" in err and "could not start" not in err


def test_reloads_run_one_at_a_time_and_the_later_one_stands(tiny_trained: TrainedTiny, tmp_path: Path, capture,
                                                            proxy):
    # The model watcher's reload (here loading the full-size starter, slowly) and a SIGHUP's (the tiny
    # active version, with a new subject tag) used to run side by side, and the one that finished
    # last won: the watcher's, with the config from before the SIGHUP, undid the new tag.
    models_dir, starter = tiny_and_starter(tiny_trained, tmp_path)
    down = capture()
    cfg = proxy_config(models_dir, down.url, tmp_path)
    p = proxy(cfg)
    tagged = replace(cfg, scoring=replace(cfg.scoring, subject_tag="[SPAM] "))

    async def watcher_then_sighup() -> list[str | None]:
        slow = asyncio.ensure_future(p.daemon.reload(version=starter))
        await asyncio.sleep(0.05)  # the starter's weights are loading
        return list(await asyncio.gather(slow, p.daemon.reload(tagged)))

    assert p.call(watcher_then_sighup()) == [starter, tiny_trained.version]
    assert p.daemon.handler.policy.subject_tag == "[SPAM] " and p.daemon.cfg == tagged
    # A reload whose models cannot load changes nothing, settings included.
    assert p.call(p.daemon.reload(cfg, version="29990101T000000Z")) == tiny_trained.version
    assert p.daemon.handler.policy.subject_tag == "[SPAM] " and p.daemon.cfg == tagged
    send(p.port, HAM % 10)
    assert len(down.wait_for(1)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("pinned", [True, False])
def test_workers_are_bound_one_cpu_each(tiny_trained: TrainedTiny, tmp_path: Path, capture, pinned: bool):
    down = capture()
    port = free_port()
    config = write_config(tmp_path, tiny_trained.models_dir, down, port, workers=2)
    if not pinned:
        config.write_text(config.read_text().replace("workers = 2", "workers = 2\npin_workers = false"))
    proc = start_serve(config, port)
    allowed = os.sched_getaffinity(0)
    try:
        deadline = time.monotonic() + 30
        while True:  # one worker answered: the other may still be starting (it names, then binds itself)
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            workers = [int(p) for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
            cpus = [os.sched_getaffinity(pid) for pid in workers]
            names = [Path(f"/proc/{pid}/comm").read_text().strip() for pid in workers]
            started = len(workers) == 2 and all(n.startswith("spamd-worker-") for n in names)
            if started and (not pinned or all(len(c) == 1 for c in cpus)) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert len(workers) == 2
    assert sorted(names) == ["spamd-worker-0", "spamd-worker-1"]  # for ps and top
    if not pinned:
        assert cpus == [allowed, allowed]
    else:
        assert all(len(c) == 1 and c <= allowed for c in cpus)
        if len(allowed) > 1:
            assert cpus[0] != cpus[1]
        assert "bound to CPU" in err


@pytest.mark.slow
def test_threads_carry_their_names_for_the_os(tiny_trained: TrainedTiny, tmp_path: Path, capture):
    """`top -H` and `ps -L` tell the scoring thread from the event loop and the score-log writer."""
    down = capture()
    port = free_port()
    proc = start_serve(write_config(tmp_path, tiny_trained.models_dir, down, port, workers=1), port)
    try:
        send(port, HAM % 1)  # the scoring thread starts with the first message
        names = {p.read_text().strip() for p in Path(f"/proc/{proc.pid}/task").glob("*/comm")}
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert {"spamd-serve", "spamd-score", "spamd-scorelog", "spamd-io"} <= names, names


def test_freeze_heap_hides_the_heap_from_the_collector_until_the_next_freeze():
    """A worker freezes its heap at start and again after each reload: what was alive at the
    first freeze is not walked by the collector, and the second freeze frees what was dropped."""
    import gc
    import weakref

    from spamd.smtp.server import freeze_heap

    class Model:  # stands for a replaced model: unreachable, but in a reference cycle
        pass

    old = Model()
    old.me = old  # type: ignore[attr-defined]
    gone = weakref.ref(old)
    try:
        freeze_heap()
        assert gc.get_freeze_count() > 0
        del old
        gc.collect()
        assert gone() is not None  # frozen: a full collection does not look at it
        freeze_heap()  # as a reload does
        assert gone() is None
    finally:
        gc.unfreeze()
