"""A throwaway Postfix instance on loopback, configured with deploy/postfix/'s snippets as the guide shows them.

The instance has its own config, queue, data and mail directories under one temporary
directory, listens on 127.0.0.1 only, delivers to a Maildir through Postfix's `virtual`
agent (or relays to an smtp-sink, for bench/postfix_load.py), and logs to a file there.
Its main.cf and master.cf are this module's test-only base (directories, queue timers,
the internal services) followed by the snippet files from deploy/postfix/MODE/ exactly as
docs/operators.md quotes them; `localize` changes only their port numbers, because a test
cannot take ports 25, 10025 and 10026 on a shared host.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "postfix"
MAILBOX = "bob@example.net"
NOBODY = 65534  # virtual(8) delivers as this uid/gid; it only needs to own the Maildir's base

BASE_MAIN = """\
# --- test-only base: a throwaway instance under {root} ---
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
myhostname = postfix.test
mydomain = test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
# The queue manager looks for work every second; deferred mail waits a minute (or `postqueue -f`).
queue_run_delay = 1s
minimal_backoff_time = 60s
maximal_backoff_time = 120s
"""

# Final delivery: example.net is a virtual mailbox domain, bob's mail goes to a Maildir.
TO_MAILDIR = """\
virtual_mailbox_domains = example.net
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = inline:{{ {mailbox}=bob/Maildir/ }}
virtual_uid_maps = static:{nobody}
virtual_gid_maps = static:{nobody}
"""

# Or, for the load benchmark: example.net is relayed to an smtp-sink on loopback.
TO_SINK = """\
relay_domains = example.net
transport_maps = inline:{{ example.net=smtp:[127.0.0.1]:{sink_port} }}
"""

BASE_MASTER = """\
# --- test-only base: internal services, nothing chrooted ---
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def postfix_installed() -> bool:
    return shutil.which("postfix", path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", "")) is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def snippet(mode: str, name: str) -> str:
    """A deploy/postfix/MODE/NAME file as shipped ('' when the mode has none)."""
    path = DEPLOY / mode / name
    return path.read_text() if path.exists() else ""


def localize(text: str, spamd_port: int, reinject_port: int, public_port: int) -> str:
    """The snippet with its ports moved: spamd's 10025, the reinjection 10026, and `smtp` (25)."""
    text = text.replace(":10025", f":{spamd_port}").replace(":10026", f":{reinject_port}")
    return re.sub(r"^smtp(\s+inet\s)", rf"127.0.0.1:{public_port}\1", text, flags=re.MULTILINE)


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


class PostfixInstance:
    """One Postfix instance in MODE ("after-queue", "before-queue", or "none": no spamd) with spamd on `spamd_port`.

    `public_port` is where senders connect (port 25 in production), `reinject_port` where
    spamd hands mail back (10026 in the snippets). Mail for example.net goes to a Maildir,
    or to an smtp-sink on `sink_port` when one is given.
    """

    def __init__(self, mode: str, spamd_port: int, sink_port: int | None = None) -> None:
        self.mode, self.spamd_port, self.sink_port = mode, spamd_port, sink_port
        self.public_port, self.reinject_port = free_port(), free_port()
        self.root = Path(tempfile.mkdtemp(prefix="spamd-postfix-"))
        self.root.chmod(0o755)  # Postfix's daemons run as the postfix user and must reach their queue
        self.config_dir = self.root / "etc"
        self._write_config()

    def _write_config(self) -> None:
        self.config_dir.mkdir()
        (self.root / "queue").mkdir()  # root's; `postfix check` makes its subdirectories
        (self.root / "data").mkdir()
        shutil.chown(self.root / "data", "postfix")
        (self.root / "mail").mkdir()
        os.chown(self.root / "mail", NOBODY, NOBODY)
        ports = (self.spamd_port, self.reinject_port, self.public_port)
        values = dict(root=self.root, mailbox=MAILBOX, nobody=NOBODY, sink_port=self.sink_port)
        main = BASE_MAIN + (TO_MAILDIR if self.sink_port is None else TO_SINK)
        main = main.format(**values) + f"# --- deploy/postfix/{self.mode}/main.cf ---\n"
        (self.config_dir / "main.cf").write_text(main + localize(snippet(self.mode, "main.cf"), *ports))
        master = BASE_MASTER
        if self.mode != "before-queue":  # the stock public smtpd; content_filter in main.cf applies to it
            master += f"127.0.0.1:{self.public_port} inet n - n - - smtpd\n"
        master += f"# --- deploy/postfix/{self.mode}/master.cf ---\n"
        (self.config_dir / "master.cf").write_text(master + localize(snippet(self.mode, "master.cf"), *ports))

    def postfix(self, *args: str) -> str:
        """Run a Postfix command (postfix, postqueue, postconf, postsuper) on this instance."""
        cmd, *rest = args
        proc = subprocess.run([f"/usr/sbin/{cmd}", "-c", str(self.config_dir), *rest],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}\n{self.log()}")
        return proc.stdout

    def start(self) -> None:
        self.postfix("postfix", "check")  # creates the queue's subdirectories with their owners
        self.postfix("postfix", "start")
        wait_listening(self.public_port)
        if self.mode != "none":
            wait_listening(self.reinject_port)

    def running(self) -> bool:
        return subprocess.run(["/usr/sbin/postfix", "-c", str(self.config_dir), "status"],
                              capture_output=True, timeout=60).returncode == 0

    def stop(self) -> None:
        if not self.running():
            return
        try:
            self.postfix("postfix", "stop")
        except AssertionError:
            self.postfix("postfix", "abort")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def flush(self) -> None:
        """`postqueue -f`: retry every deferred message now."""
        self.postfix("postqueue", "-f")

    def queue(self) -> list[dict[str, object]]:
        """The messages in the queue, as `postqueue -j` describes them (one JSON object each)."""
        return [json.loads(line) for line in self.postfix("postqueue", "-j").splitlines() if line.strip()]

    def delivered(self) -> list[bytes]:
        new = self.root / "mail" / "bob" / "Maildir" / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    def wait_delivered(self, n: int, timeout: float = 30) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(found := self.delivered()) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        return found

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else "(no maillog)"


class SpamdProcess:
    """`spamd serve` as its own process on 127.0.0.1:PORT, handing mail to Postfix's reinjection port."""

    def __init__(self, workdir: Path, models_dir: Path, port: int, reinject_port: int,
                 reject_threshold: str = "false", workers: int = 1) -> None:
        self.workdir, self.port = workdir, port
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "spamd.toml"
        self.config.write_text(f"""
[smtp]
listen = "127.0.0.1:{port}"
workers = {workers}
drain_timeout = 10.0
[delivery]
url = "smtp://127.0.0.1:{reinject_port}"
timeout = 20.0
[scoring]
models_dir = "{models_dir}"
reject_threshold = {reject_threshold}
[database]
url = "sqlite:///spamd.db"
[logs]
spool = "spool.jsonl"
[training]
in_serve = false
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.workdir / "spamd.log", "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "spamd", "serve", "--config", str(self.config)],
                                         cwd=self.workdir, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"spamd serve did not start listening:\n{self.log()}")

    def stop(self) -> int:
        """SIGTERM (spamd drains what is in flight) and wait; returns the exit status."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        proc.terminate()
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)

    def log(self) -> str:
        path = self.workdir / "spamd.log"
        return path.read_text(errors="replace") if path.exists() else ""
