"""config.toml → frozen, typed Config objects, loaded once and passed down explicitly.

Every key has a default (the embedded defaults run a fresh checkout end to end: SQLite
under ./var, the starter models under ./models, delivery into ./var/Maildir). Relative
paths in a config file are taken relative to that file's directory.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from spamd.errors import ConfigError

ENV_VAR = "SPAMD_CONFIG"
# [delivery] tls, after Postfix's smtp_tls_security_level (spamd/smtp/tls.py says what each does).
TlsLevel = Literal["none", "may", "encrypt", "verify"]
# [scoring] rnn_rule: when the RNN is consulted (spamd/combine.py); on_failure: what a failed scoring does.
RnnRule = Literal["never", "uncertain", "long", "always"]
OnFailure = Literal["pass", "tempfail"]


@dataclass(frozen=True)
class SmtpConfig:
    listen: str = "127.0.0.1:10025"
    hostname: str = "spamd.localdomain"
    received_header: bool = True  # a Received: trace line on each message (received_line in actions.py)
    max_message_size: int = 25 * 1024 * 1024
    max_connections: int = 500
    max_recipients: int = 1000
    max_line_length: int = 1024 * 1024
    idle_timeout: float = 300.0
    drain_timeout: float = 60.0
    workers: int = 2
    pin_workers: bool = True
    xforward_hosts: tuple[str, ...] = ("127.0.0.0/8", "::1")  # clients that may send XFORWARD
    tls_cert_file: str = ""  # PEM certificate (chain) for STARTTLS from clients; "" offers no STARTTLS
    tls_key_file: str = ""
    require_tls: bool = False  # refuse MAIL (530) before STARTTLS


@dataclass(frozen=True)
class DeliveryConfig:
    url: str = "maildir:var/Maildir"
    timeout: float = 60.0
    pool_size: int = 32
    tls: TlsLevel = "none"
    tls_ca_file: str = ""


@dataclass(frozen=True)
class ScoringConfig:
    enabled: bool = True
    models_dir: str = "models"
    rnn_rule: RnnRule = "uncertain"
    uncertain_band: tuple[float, float] = (0.05, 0.95)
    spam_threshold: float | None = None
    reject_threshold: float | None = None
    subject_tag: str = ""
    on_failure: OnFailure = "pass"
    timeout: float = 10.0
    threads: int = 1
    cnn_table: bool = True
    batch_max: int = 32
    batch_wait_ms: float = 0.0


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///var/spamd.db"


@dataclass(frozen=True)
class LogsConfig:
    retention_days: int | None = 30  # 0 or None (false in the file): never purged
    spool: str = "var/scorelog.spool"
    flush_interval: float = 0.5
    batch_size: int = 500


@dataclass(frozen=True)
class TrainingConfig:
    schedule: str = "0 3 * * *"
    min_new_labels: int = 20
    mix_starter: bool = True
    starter_corpus: str = ""
    from_scratch: bool = False
    threads: int = 2
    epochs: int = 10
    holdout_fraction: float = 0.2
    gate_auc_tolerance: float = 0.002
    gate_fpr_tolerance: float = 0.0
    gate_min_holdout: int = 10  # fewest spam, and fewest ham, in the holdout for the gate to judge
    poll_interval: float = 10.0
    lock_stale_after: float = 3600.0
    nice: int = 10
    in_serve: bool = True
    keep_versions: int | None = 5  # 0 or None (false in the file): keep every version


@dataclass(frozen=True)
class Config:
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    base_dir: Path = field(default_factory=Path.cwd)

    def path(self, value: str) -> Path:
        """A configured path, resolved against the config file's directory."""
        p = Path(value)
        return p if p.is_absolute() else self.base_dir / p

    @property
    def models_dir(self) -> Path:
        return self.path(self.scoring.models_dir)

    @property
    def database_url(self) -> str:
        url = self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(self.path(url[len(prefix) :]))
        return url


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load config from `path`, else $SPAMD_CONFIG, else the embedded defaults."""
    path = path or os.environ.get(ENV_VAR)
    if not path:
        return Config()
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {p} does not exist") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from exc
    cfg = _build(Config, data, "")
    check(cfg)
    return replace(cfg, base_dir=p.resolve().parent)


# Settings that load as numbers but cannot work outside a range: each used to be taken, and then,
# for example, reject_threshold = 0 refused every message as spam, [scoring] timeout = 0 passed
# every message unscored, [logs] batch_size = 0 wrote no score-log row.
_POSITIVE = ("smtp.max_message_size", "smtp.max_connections", "smtp.max_recipients", "smtp.max_line_length",
             "smtp.idle_timeout", "smtp.workers", "delivery.timeout", "delivery.pool_size", "scoring.timeout",
             "scoring.threads", "scoring.batch_max", "logs.flush_interval", "logs.batch_size",
             "training.poll_interval", "training.epochs", "training.threads", "training.lock_stale_after")
_NOT_NEGATIVE = ("smtp.drain_timeout", "scoring.batch_wait_ms", "logs.retention_days", "training.min_new_labels",
                 "training.gate_auc_tolerance", "training.gate_fpr_tolerance", "training.gate_min_holdout",
                 "training.keep_versions")
_THRESHOLDS = ("scoring.spam_threshold", "scoring.reject_threshold")


def check(cfg: Config) -> None:
    """ConfigError for a setting outside the range where it can work."""
    def value(key: str) -> Any:
        section, name = key.split(".")
        return getattr(getattr(cfg, section), name)

    for key in _POSITIVE:
        if value(key) <= 0:
            raise ConfigError(f"{key} has a bad value {value(key)!r} (expected more than 0)")
    for key in _NOT_NEGATIVE:
        if value(key) is not None and value(key) < 0:
            raise ConfigError(f"{key} has a bad value {value(key)!r} (expected 0 or more)")
    for key in _THRESHOLDS:
        if value(key) is not None and not 0 < value(key) <= 1:
            raise ConfigError(f"{key} has a bad value {value(key)!r} "
                              "(expected more than 0 and at most 1, or false: off)")
    if not 0 < cfg.training.holdout_fraction < 1:
        raise ConfigError(f"training.holdout_fraction has a bad value {cfg.training.holdout_fraction!r} "
                          "(expected more than 0 and less than 1)")
    low, high = cfg.scoring.uncertain_band
    if not 0 <= low <= high <= 1:
        raise ConfigError(f"scoring.uncertain_band has a bad value [{low}, {high}] (expected [low, high] in 0..1)")
    backend = cfg.database.url.partition(":")[0].partition("+")[0]
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"database.url {cfg.database.url!r}: spamd stores in sqlite:///PATH or "
                          "postgresql+psycopg://user@host/db")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.name != "base_dir"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(sorted(where + k for k in unknown))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"[{where}{name}] must be a table")
            kwargs[name] = _build(hint, value, f"{where}{name}.")  # type: ignore[arg-type]
        else:
            kwargs[name] = _coerce(value, hint, where + name)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    if get_origin(hint) is Literal:
        if value in get_args(hint):
            return value
        raise ConfigError(f"{key} has a bad value {value!r} (expected one of {', '.join(map(repr, get_args(hint)))})")
    text = str(hint)
    if text == "tuple[str, ...]":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{key} must be a list of strings")
    if "tuple" in text:
        if isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value):
            return (float(value[0]), float(value[1]))
        raise ConfigError(f"{key} must be a list of two numbers")
    if value is False and "None" in text:
        return None  # `false` switches an optional threshold off
    if isinstance(value, bool):
        if "bool" in text:
            return value
    elif "float" in text and _is_number(value):
        return float(value)
    elif "int" in text and isinstance(value, int) or "str" in text and isinstance(value, str):
        return value
    raise ConfigError(f"{key} has a bad value {value!r} (expected {text})")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
