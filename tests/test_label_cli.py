"""`spamd label` and `spamd labels` end to end: Maildir, mbox, stdin, a directory with bad files, relabel, forget."""

from __future__ import annotations

import mailbox
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

from tests.fixtures_models import fixture_mail

Spamd = Callable[..., Result]


def maildir(path: Path, messages: list[bytes]) -> Path:
    """A real Maildir: half the messages in new/, half in cur/, and a half-delivered one in tmp/."""
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True)
    for n, raw in enumerate(messages):
        sub = "new" if n % 2 else "cur"
        name = f"1700000000.{n}.host" + (":2,S" if sub == "cur" else "")
        (path / sub / name).write_bytes(raw)
    (path / "tmp" / "1700000099.x.host").write_bytes(b"Subject: half-written\n\nnot yet")
    return path


def mbox(path: Path, messages: list[bytes]) -> Path:
    box = mailbox.mbox(str(path))
    for raw in messages:
        box.add(raw)
    box.close()
    return path


def test_maildir_is_labelled_and_a_second_run_changes_nothing(spamd: Spamd, tmp_path: Path) -> None:
    box = maildir(tmp_path / "Junk", fixture_mail("train", "spam")[:6])
    first = spamd("label", "spam", "--user", "alice", str(box))
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == "6 added, 0 relabelled, 0 unchanged, 0 duplicate (merged), 0 unreadable"
    again = spamd("label", "spam", "--user", "alice", str(box))
    assert again.stdout.startswith("0 added, 0 relabelled, 6 unchanged,")
    listing = spamd("labels").stdout
    assert "spam   alice" in listing and "total: 6 spam, 0 ham, 6 in all" in listing


def test_mbox_with_a_duplicate_is_merged(spamd: Spamd, tmp_path: Path) -> None:
    ham = fixture_mail("train", "ham")[:4]
    path = mbox(tmp_path / "ham.mbox", ham + ham[:1])
    result = spamd("label", "ham", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "4 added, 0 relabelled, 0 unchanged, 1 duplicate (merged), 0 unreadable"


def test_stdin_is_one_message_labelled_as_piped(spamd: Spamd) -> None:
    raw = fixture_mail("train", "spam")[0]
    result = spamd("label", "spam", "--user", "imapsieve", "-", input=b"X-Spam-Flag: YES\n" + raw)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("1 added")
    assert "spam   imapsieve                pipe" in spamd("labels").stdout
    # The same message without spamd's header is the same message.
    assert spamd("label", "spam", "-", input=raw).stdout.startswith("0 added, 0 relabelled, 1 unchanged")


def test_bad_files_are_reported_and_the_rest_is_labelled(spamd: Spamd, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for n, raw in enumerate(fixture_mail("train", "ham")[:3]):
        (folder / f"{n}.eml").write_bytes(raw)
    (folder / "empty.eml").write_bytes(b"")
    (folder / "gone.eml").symlink_to(tmp_path / "nowhere")
    result = spamd("label", "ham", str(folder), str(tmp_path / "missing.eml"))
    assert result.exit_code == 1
    assert result.stdout.strip() == "3 added, 0 relabelled, 0 unchanged, 0 duplicate (merged), 3 unreadable"
    assert "empty.eml: empty message" in result.stderr
    assert "gone.eml: no such file or directory" in result.stderr
    assert "missing.eml: no such file or directory" in result.stderr


def test_relabel_then_forget(spamd: Spamd, tmp_path: Path) -> None:
    files = []
    for n, raw in enumerate(fixture_mail("train", "spam")[:3]):
        files.append(tmp_path / f"{n}.eml")
        files[-1].write_bytes(raw)
    assert spamd("label", "spam", "--user", "alice", *map(str, files)).exit_code == 0
    relabel = spamd("label", "ham", "--user", "bob", str(files[0]))
    assert relabel.stdout.startswith("0 added, 1 relabelled, 0 unchanged")
    listing = spamd("labels").stdout
    assert "ham    bob" in listing and "total: 2 spam, 1 ham, 3 in all" in listing
    forget = spamd("label", "forget", str(files[0]), str(files[1]))
    assert forget.stdout.strip() == "2 forgotten, 0 not labelled, 0 duplicate (merged), 0 unreadable"
    assert spamd("label", "forget", str(files[0])).stdout.startswith("0 forgotten, 1 not labelled")
    assert "total: 1 spam, 0 ham, 1 in all" in spamd("labels").stdout


def test_malformed_mail_is_still_labelled(spamd: Spamd) -> None:
    from tests.fixtures_models import DATA

    result = spamd("label", "spam", str(DATA / "malformed"))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{len(fixture_mail('malformed', ''))} added")


def test_the_configured_subject_tag_comes_off_a_copy_spamd_tagged(spamd: Spamd, config_file: Path) -> None:
    # With [scoring] subject_tag, spam reaches the mailbox as "[SPAM] ..."; labelled, it is the
    # message spamd scored, one with a copy kept untagged (and a model never learns the tag).
    with config_file.open("a") as fh:
        fh.write('\n[scoring]\nsubject_tag = "[SPAM] "\n')
    raw = b"From: a@example.org\nSubject: cheap pills\nMessage-ID: <t1@example.org>\n\nbuy\n"
    tagged = (b"X-Spam-Flag: YES\nX-Spam-Id: 0123456789abcdef0123\n"
              + raw.replace(b"Subject: ", b"Subject: [SPAM] "))
    assert spamd("label", "spam", "-", input=tagged).stdout.startswith("1 added")
    assert spamd("label", "spam", "-", input=raw).stdout.startswith("0 added, 0 relabelled, 1 unchanged")


def test_a_directory_with_a_link_loop_is_read_once(spamd: Spamd, tmp_path: Path) -> None:
    # A link back up the tree was followed until the OS refused: every message some 40 times.
    sub = tmp_path / "in" / "sub"
    sub.mkdir(parents=True)
    for n, raw in enumerate(fixture_mail("train", "spam")[:3]):
        (sub / f"{n}.eml").write_bytes(raw)
    (sub / "loop").symlink_to(tmp_path / "in")
    (tmp_path / "in" / "tmp").mkdir()  # not a Maildir's: read
    (tmp_path / "in" / "tmp" / "3.eml").write_bytes(fixture_mail("train", "spam")[3])
    result = spamd("label", "spam", str(tmp_path / "in"))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "4 added, 0 relabelled, 0 unchanged, 0 duplicate (merged), 0 unreadable"
