"""One proxy worker: its listening socket, handler, batcher and downstream in one event loop.

`Daemon.start` / `stop` / `reload` are what the signal handlers (and the tests) call:
SIGTERM stops accepting and drains the messages in flight, SIGHUP reloads config and models.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass

import torch

from spamd.cli.common import load_active
from spamd.config import Config, load_config
from spamd.errors import ConfigError, ModelError, SpamdError, StoreError
from spamd.modelstore import ModelSet
from spamd.registry import ModelWatcher
from spamd.scorelog import ScoreLogSink
from spamd.scorer import Scorer, ScoringPolicy, reusable_cnn
from spamd.smtp import hup, replies, xforward
from spamd.smtp.actions import ActionPolicy
from spamd.smtp.batcher import Batcher
from spamd.smtp.forward import Downstream, open_downstream
from spamd.smtp.handler import ProxyHandler
from spamd.smtp.protocol import Connections, SpamdSMTP
from spamd.smtp.tls import listener_context
from spamd.threadnames import named_executor

log = logging.getLogger("spamd.smtp")
QUIT_GRACE = 1.0  # seconds a drained daemon waits for clients to QUIT before it answers 421


def load_models(cfg: Config, version: str | None = None) -> ModelSet | None:
    """The active models, or `version` (the one place that loads them); None, logged, when there
    are none usable."""
    if not cfg.scoring.enabled:
        return None
    try:
        return load_active(cfg, version)
    except (ModelError, StoreError) as exc:
        logging.getLogger("spamd.score").error("no usable model, every message passes as Unknown: %s", exc)
        return None


def make_scorer(cfg: Config, models: ModelSet | None, previous: Scorer | None = None) -> Scorer | None:
    """The scorer for these settings and models, keeping `previous`'s CNN table when the CNN is
    the same. Blocking (building the CNN's table took 0.6 s in `bench/speed`): never call it on the
    event loop."""
    if models is None:
        return None
    s = cfg.scoring
    policy = ScoringPolicy(s.rnn_rule, s.uncertain_band, s.spam_threshold)
    return Scorer(models, policy, cnn_table=s.cnn_table, cnn=reusable_cnn(previous, models, s.cnn_table))


def freeze_heap() -> None:
    """Take what is alive now (modules, models, config) out of the cyclic garbage collector's walks.

    A full collection walks every object the collector tracks, and holds the GIL while it does:
    with torch, SQLAlchemy and aiosmtpd imported and the models loaded, some 220,000 objects.
    Under `bench/load` each worker ran one such collection of 100-130 ms (seen with gc.callbacks,
    by hand), and every message in that worker waited for it. A worker's startup objects live as
    long as it does; frozen, a full collection walks only what came after them. An earlier
    freeze is undone first, so that after a reload the replaced models can be collected.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def listen_socket(listen: str, reuse_port: bool = False) -> socket.socket:
    """A bound (not yet listening) TCP socket for "host:port" (IPv6 as "[::1]:port")."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535 or (":" in host and not host.startswith("[")):
        raise ConfigError(f"[smtp] listen {listen!r} must look like host:port, port 0-65535 (IPv6: [::1]:port)")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host.strip("[]") or None, int(port),
                                                          type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"[smtp] listen {listen!r}: no such address ({exc.strerror})") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise SpamdError(f"cannot listen on {listen}: {exc.strerror}") from exc
    return sock


async def refuse_delivery_to_itself(cfg: Config, downstream: Downstream, sock: socket.socket) -> None:
    """Stop at start when `[delivery] url` names spamd's own listening socket (a typo of one port
    away from the reinjection port, say): each MAIL would open a downstream transaction with spamd
    itself, which opens another, until the pool ran out, and the sender's MAIL would go unanswered
    (by hand, before this check: swaks waited 30 s and gave up). Postfix refuses the same ("mail
    for ... loops back to myself"). A host name that does not resolve within two seconds is not
    checked: the relay reports it per message."""
    from spamd.smtp.relay import SmtpDownstream

    if not isinstance(downstream, SmtpDownstream):
        return
    own_ip, own_port = sock.getsockname()[:2]
    if downstream.port != own_port:
        return
    try:
        found = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
            downstream.host, downstream.port, type=socket.SOCK_STREAM), 2.0)
    except (OSError, TimeoutError):
        return
    own = ipaddress.ip_address(own_ip)
    v6only = sock.family == socket.AF_INET6 and sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    for family, _, _, _, addr in found:
        ip = ipaddress.ip_address(addr[0])
        if ip == own or (own.is_unspecified and (family == sock.family or not v6only) and _is_local(family, str(ip))):
            raise ConfigError(f"[delivery] url {cfg.delivery.url} is spamd's own [smtp] listen "
                              f"{cfg.smtp.listen}: every message would loop back into spamd")


def _is_local(family: int, ip: str) -> bool:
    """Whether `ip` is an address of this host: only those can be bound."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError:
            return False
    return True


@dataclass
class Daemon:
    cfg: Config
    handler: ProxyHandler
    batcher: Batcher
    downstream: Downstream
    connections: Connections
    server: asyncio.Server
    frozen_heap: bool = False  # set by a worker that froze its heap at start: reloads freeze it again
    reloading: asyncio.Lock = field(default_factory=asyncio.Lock)  # one reload at a time

    @classmethod
    async def start(cls, cfg: Config, sink: ScoreLogSink, models: ModelSet | None,
                    sock: socket.socket | None = None) -> Daemon:
        loop = asyncio.get_running_loop()
        smtp = cfg.smtp
        # Settings that cannot work stop the start here (ConfigError), before any thread is started.
        tls = listener_context(cfg.path(smtp.tls_cert_file) if smtp.tls_cert_file else None,
                               cfg.path(smtp.tls_key_file) if smtp.tls_key_file else None, smtp.require_tls)
        xforward_hosts = xforward.networks(smtp.xforward_hosts)
        downstream = open_downstream(cfg)
        bound = sock or listen_socket(cfg.smtp.listen)
        try:
            await refuse_delivery_to_itself(cfg, downstream, bound)
        except ConfigError:
            if sock is None:
                bound.close()
            raise
        scorer = await asyncio.to_thread(make_scorer, cfg, models)
        batcher = Batcher(scorer, cfg.scoring.batch_max, cfg.scoring.batch_wait_ms / 1000)
        handler = ProxyHandler(batcher, downstream, sink, ActionPolicy.from_config(cfg.scoring),
                               cfg.scoring.timeout, smtp.max_recipients, xforward_hosts,
                               smtp.hostname if smtp.received_header else "")
        conns = Connections(smtp.max_connections)

        def protocol() -> SpamdSMTP:
            return SpamdSMTP(handler, conns, line_length_limit=smtp.max_line_length,
                             data_size_limit=smtp.max_message_size, hostname=smtp.hostname, ident="spamd",
                             timeout=smtp.idle_timeout, enable_SMTPUTF8=True, tls_context=tls,
                             require_starttls=smtp.require_tls, loop=loop)

        server = await loop.create_server(protocol, sock=bound, backlog=1024)
        return cls(cfg, handler, batcher, downstream, conns, server)

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, let open transactions finish (up to drain_timeout), then close."""
        self.server.close()
        self.handler.draining = True
        try:
            await asyncio.wait_for(self._drained(), self.cfg.smtp.drain_timeout)
        except TimeoutError:
            log.warning("drain timeout: closing connections with transactions still open")
        try:
            # Clients that just heard their reply usually QUIT at once: let them hear 221.
            await asyncio.wait_for(self.connections.all_closed(), QUIT_GRACE)
        except TimeoutError:
            pass
        self.connections.close_all(replies.SHUTTING_DOWN)
        await self.batcher.close()
        await self.downstream.close()

    async def _drained(self) -> None:
        """No transaction open and every DATA answered (new ones are refused meanwhile)."""
        await self.handler.drained()
        await self.connections.quiet()

    async def reload(self, cfg: Config | None = None, version: str | None = None) -> str | None:
        """New [scoring] settings (`cfg`; None: those in use) and models (`version`; None: the active
        one), all or nothing; the rest of a config needs a restart (`needs_restart`). Reloads run
        one at a time, each from what the one before left (a SIGHUP's and the model watcher's once
        overlapped, and the one that finished last undid the other). Returns the version in use."""
        async with self.reloading:
            cfg = cfg or self.cfg
            models = await asyncio.to_thread(load_models, cfg, version)
            if models is None and cfg.scoring.enabled:
                log.error("reload failed: keeping the settings and models in use")
                return self.version
            self.batcher.scorer = await asyncio.to_thread(make_scorer, cfg, models, self.batcher.scorer)
            if self.frozen_heap:
                freeze_heap()  # one full collection: frees the replaced models, freezes the new ones
            self.handler.policy = ActionPolicy.from_config(cfg.scoring)
            self.handler.scoring_timeout = cfg.scoring.timeout
            self.batcher.configure(cfg.scoring.batch_max, cfg.scoring.batch_wait_ms / 1000)
            self.cfg = cfg
            log.warning("reloaded: model %s", models.version if models else "none (scoring is off)")
            return self.version

    @property
    def version(self) -> str | None:
        """The model version scoring now (None: none)."""
        models = getattr(self.batcher.scorer, "models", None)
        return models.version if models is not None else None


def needs_restart(running: Config, loaded: Config) -> list[str]:
    """The settings that differ between the config a worker started from and one loaded later,
    and that a reload does not apply: all but [scoring]'s (torch's thread count included)."""
    changed = []
    for section in fields(Config):
        old, new = getattr(running, section.name), getattr(loaded, section.name)
        if not is_dataclass(old):
            continue  # base_dir: the file's own place
        for setting in fields(old):
            applied = section.name == "scoring" and setting.name != "threads"
            if not applied and getattr(old, setting.name) != getattr(new, setting.name):
                changed.append(f"[{section.name}] {setting.name}")
    return changed


def run(cfg: Config, config_path: str | None, sink_factory: Callable[[Config], tuple[ScoreLogSink, Callable[[], None]]],
        sock: socket.socket | None = None) -> None:
    """Run one worker until SIGTERM or SIGINT (draining first); SIGHUP reloads."""
    torch.set_num_threads(cfg.scoring.threads)
    asyncio.run(_main(cfg, config_path, sink_factory, sock))


async def _main(cfg: Config, config_path: str | None,
                sink_factory: Callable[[Config], tuple[ScoreLogSink, Callable[[], None]]],
                sock: socket.socket | None) -> None:
    loop = asyncio.get_running_loop()
    # The blocking helpers (loading models, maildir delivery, polling the registry) on threads
    # named for `ps`, not taking the event loop's name.
    loop.set_default_executor(named_executor("spamd-io"))
    sink, close_sink = sink_factory(cfg)
    try:
        # The file as it was at start (cfg has serve's command-line settings on it): what a
        # reload compares with, to say which changes wait for a restart.
        started_from = await asyncio.to_thread(_config_or_none, config_path)
        models = await asyncio.to_thread(load_models, cfg)
        daemon = await Daemon.start(cfg, sink, models, sock)
        freeze_heap()
        daemon.frozen_heap = True
        watcher = loop.create_task(watch_models(daemon, models).run())
        host = cfg.smtp.listen.rpartition(":")[0]
        log.warning("listening on %s:%d, delivering to %s", host, daemon.port, cfg.delivery.url)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_reload(daemon, config_path, started_from)))
        if hup.take():  # one came while starting
            loop.create_task(_reload(daemon, config_path, started_from))
        await stop.wait()
        watcher.cancel()
        log.warning("stopping: draining messages in flight")
        await daemon.stop()
    finally:
        close_sink()


def watch_models(daemon: Daemon, models: ModelSet | None) -> ModelWatcher:
    """Polls the model registry; a newly promoted version is loaded as SIGHUP loads one."""
    cfg = daemon.cfg
    return ModelWatcher(cfg.database_url, cfg.models_dir, cfg.training.poll_interval,
                        models.version if models else None, lambda version: daemon.reload(version=version),
                        sweep=bool(cfg.training.keep_versions))


async def _reload(daemon: Daemon, config_path: str | None, started_from: Config | None) -> None:
    try:
        cfg = await asyncio.to_thread(load_config, config_path)
    except ConfigError as exc:
        log.error("reload: %s (keeping the old config)", exc)
        return
    if started_from is not None and (waiting := needs_restart(started_from, cfg)):
        log.warning("reload: %s changed, and will take effect only when spamd restarts", ", ".join(waiting))
    await daemon.reload(cfg)


def _config_or_none(config_path: str | None) -> Config | None:
    try:
        return load_config(config_path)
    except ConfigError:
        return None  # changed since serve read it, and broken: a reload will say so
