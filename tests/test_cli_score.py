"""`spamd score` and `spamd train` from the command line, on real files."""

from __future__ import annotations

import json
import mailbox
from pathlib import Path

from click.testing import CliRunner

from spamd import modelstore
from spamd.cli import main
from tests.fixtures_models import DATA, TrainedTiny


def write_config(tmp_path: Path, models_dir: Path) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[scoring]\nmodels_dir = "{models_dir}"\nrnn_rule = "always"\n')
    return cfg


def test_score_json_gives_one_verdict_per_message(tiny_trained: TrainedTiny, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, tiny_trained.models_dir)
    spam = sorted((DATA / "starter" / "spam").iterdir())[:3]
    box = mailbox.mbox(str(tmp_path / "box.mbox"))
    for path in sorted((DATA / "starter" / "ham").iterdir())[:2]:
        box.add(path.read_bytes())
    box.close()
    result = CliRunner().invoke(main, ["score", "--config", str(cfg), "--json", *map(str, spam),
                                       str(tmp_path / "box.mbox")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 5
    assert {r["path"] for r in rows[3:]} == {f"{tmp_path / 'box.mbox'}#0", f"{tmp_path / 'box.mbox'}#1"}
    for r in rows:
        assert set(r) >= {"path", "score", "verdict", "cnn", "rnn", "long_context", "model"}
        assert r["verdict"] == ("spam" if r["score"] >= r["threshold"] else "ham")
        assert r["model"] == tiny_trained.version and r["rnn"] is not None  # rnn_rule = always


def test_score_reports_unreadable_inputs_and_fails_at_the_end(tiny_trained: TrainedTiny, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, tiny_trained.models_dir)
    good = sorted((DATA / "starter" / "spam").iterdir())[0]
    result = CliRunner().invoke(main, ["--config", str(cfg), "score", str(tmp_path / "missing.eml"), str(good)])
    assert result.exit_code == 1
    assert "missing.eml: no such file or directory" in result.output
    assert good.name in result.output  # the readable one was still scored
    assert "Traceback" not in result.output


def test_score_of_a_directory_with_no_message_says_so(tiny_trained: TrainedTiny, tmp_path: Path) -> None:
    # It printed nothing and exited 0, as if everything had been scored.
    cfg = write_config(tmp_path, tiny_trained.models_dir)
    for sub in ("cur", "new", "tmp"):
        (tmp_path / "Maildir" / sub).mkdir(parents=True)
    result = CliRunner().invoke(main, ["--config", str(cfg), "score", str(tmp_path / "Maildir")])
    assert result.exit_code == 1 and "no message found in" in result.output


def test_score_without_models_is_a_clear_error(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, tmp_path / "empty")
    result = CliRunner().invoke(main, ["--config", str(cfg), "score", str(DATA / "malformed")])
    assert result.exit_code == 1
    assert "no active model" in result.output


def test_train_writes_a_new_version_that_scores(tiny_trained: TrainedTiny, models_dir: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, models_dir)
    result = CliRunner().invoke(main, ["--config", str(cfg), "train", "--spam", str(DATA / "train" / "spam"),
                                       "--ham", str(DATA / "train" / "ham"), "--epochs", "1",
                                       "--from", tiny_trained.version, "--activate"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert modelstore.active_version(models_dir) == report["version"] != tiny_trained.version
    loaded = modelstore.load(models_dir, report["version"])
    assert loaded.manifest.parent == tiny_trained.version
    assert loaded.manifest.train_counts["spam"] + loaded.manifest.train_counts["val_spam"] == 30
