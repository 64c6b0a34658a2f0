"""config.toml → typed, frozen Config; bad keys and values are clear errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from spamd.config import Config, load_config
from spamd.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[1] / "config.toml"


def test_shipped_config_is_the_embedded_defaults() -> None:
    cfg = load_config(SHIPPED)
    assert replace(cfg, base_dir=Config().base_dir) == Config()


def test_every_shipped_key_has_a_comment() -> None:
    lines = SHIPPED.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"config.toml line {i + 1} has no comment: {line}"


def test_values_are_typed_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[scoring]\nspam_threshold = 0.7\nuncertain_band = [0, 1]\nthreads = 2\n'
                    '[database]\nurl = "sqlite:///db/x.db"\n')
    cfg = load_config(path)
    assert cfg.scoring.spam_threshold == 0.7 and cfg.scoring.uncertain_band == (0.0, 1.0)
    assert cfg.scoring.threads == 2 and cfg.scoring.reject_threshold is None
    assert cfg.database_url == f"sqlite:///{tmp_path}/db/x.db"
    assert cfg.models_dir == tmp_path / "models"


def test_tls_takes_the_levels_by_name(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[delivery]\nurl = "smtp://mx.example.org:25"\ntls = "verify"\ntls_ca_file = "ca.pem"\n')
    cfg = load_config(path)
    assert (cfg.delivery.tls, cfg.delivery.tls_ca_file) == ("verify", "ca.pem")
    assert cfg.path(cfg.delivery.tls_ca_file) == tmp_path / "ca.pem"


@pytest.mark.parametrize("body, message", [
    ("[scoring]\nthreads = 'two'\n", "scoring.threads"),
    ("[scoring]\nthreads = true\n", "scoring.threads"),
    ("[scoring]\nuncertain_band = [1]\n", "two numbers"),
    ("[delivery]\ntls = 'maybe'\n", r"delivery.tls has a bad value 'maybe' \(expected one of 'none', 'may', "),
    ("[delivery]\ntls = true\n", "delivery.tls has a bad value True"),
    # A misspelt rule or failure mode would otherwise mean "never consult the RNN" or "pass".
    ("[scoring]\nrnn_rule = 'sometimes'\n", r"rnn_rule has a bad value 'sometimes' \(expected one of 'never'"),
    ("[scoring]\non_failure = 'drop'\n", r"on_failure has a bad value 'drop' \(expected one of 'pass', 'tempfail'"),
    ("[smtp]\nxforward_hosts = '127.0.0.1'\n", "smtp.xforward_hosts must be a list of strings"),
    ("[logs]\nretention_days = -1\n", "logs.retention_days has a bad value -1"),  # it purged every row
    # Each loaded, and then could not work: every message refused as spam, passed unscored, tagged,
    # refused with 451 or 421; no score-log row written, or the writer spinning a CPU.
    ("[scoring]\nreject_threshold = 0\n", "scoring.reject_threshold has a bad value 0"),
    ("[scoring]\nspam_threshold = 70\n", "scoring.spam_threshold has a bad value 70"),
    ("[scoring]\ntimeout = 0\n", "scoring.timeout has a bad value 0"),
    ("[scoring]\nthreads = 0\n", "scoring.threads has a bad value 0"),
    ("[scoring]\nuncertain_band = [0.95, 0.05]\n", "uncertain_band has a bad value"),
    ("[delivery]\ntimeout = 0\n", "delivery.timeout has a bad value 0"),
    ("[smtp]\nidle_timeout = 0\n", "smtp.idle_timeout"),
    ("[smtp]\nmax_message_size = -1\n", "smtp.max_message_size"),
    ("[smtp]\nmax_connections = 0\n", "smtp.max_connections"),
    ("[logs]\nbatch_size = 0\n", "logs.batch_size"),
    ("[logs]\nflush_interval = 0\n", "logs.flush_interval"),
    ("[training]\nholdout_fraction = 1.0\n", "training.holdout_fraction"),
    ("[database]\nurl = 'postgres://u@h/db'\n", "spamd stores in sqlite"),
    ("[database]\nurl = 'notaurl'\n", "spamd stores in sqlite"),
    ("[scoring]\nnope = 1\n", "unknown config key"),
    ("[nope]\nx = 1\n", "unknown config key"),
    ("scoring = 3\n", "must be a table"),
    ("[scoring\n", "cannot read config"),
])
def test_bad_config_is_a_clear_error(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.toml")
