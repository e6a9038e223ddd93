"""Every file the tool reads is a regular file under a size limit (issue 12 E and H).

Devices never end (/dev/zero), a FIFO blocks until a writer comes, a sparse file claims
gigabytes it does not hold: each is refused in one line before a byte is read, the gallery
as it was. Galleries and keys are private (0600/0700), and a gallery path that is not a
regular file is refused before SQLite touches it.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consentmatch import Consent, Gallery
from consentmatch.cli import app
from consentmatch.errors import EncryptionKeyError, ImageError, ManifestError, StorageError
from consentmatch.files import CSV_MAX_BYTES, KEY_FILE_MAX_BYTES, FileKind, read_file
from consentmatch.images import MAX_FILE_BYTES, load_photo
from consentmatch.crypto import generate_key

from .conftest import FakeEncoder, fake_photo

runner = CliRunner()
CLI = [sys.executable, "-c", "from consentmatch.cli import main; main()"]


@pytest.fixture
def specials(tmp_path: Path) -> dict[str, Path]:
    """A device, a FIFO, a folder and a sparse file one byte over the CSV limit."""
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    big = tmp_path / "big.csv"
    with big.open("wb") as handle:
        handle.truncate(CSV_MAX_BYTES + 1)
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    return {"device": Path("/dev/zero"), "fifo": fifo, "folder": folder, "big": big}


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("consentmatch.vision.default_encoder", lambda settings=None: FakeEncoder())


@pytest.fixture
def one_subject(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "g.db"
    with Gallery(path, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", ["door"]))
    yield path


def _state(path: Path) -> list[tuple[str, int]]:
    with Gallery(path, encoder=FakeEncoder()) as gallery:
        assert gallery.verify_audit().intact
        return [(s.subject, s.templates) for s in gallery.subjects()] + [(e.action, e.seq) for e in gallery.audit()]


def _one_line(result, code: int = 1) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    return str(result.stderr)


# -- the guard itself ----------------------------------------------------------------------


def test_read_file_refuses_what_is_not_a_small_regular_file(specials: dict[str, Path], tmp_path: Path) -> None:
    kind = FileKind("Manifest", "the CSV file", CSV_MAX_BYTES, "split it into smaller files")
    expected = {
        "device": "is not a regular file (a device, pipe or socket): name the CSV file.",
        "fifo": "is not a regular file (a device, pipe or socket): name the CSV file.",
        "folder": "is a directory, not a regular file: name the CSV file.",
        "big": "is 64.0 MiB (67,108,865 bytes), over the 64 MiB limit: split it into smaller files.",
    }
    for name, path in specials.items():
        with pytest.raises(ManifestError) as caught:
            read_file(path, kind, ManifestError)
        assert str(caught.value) == f"Manifest '{path}' {expected[name]}"
    with pytest.raises(ManifestError, match="does not exist"):
        read_file(tmp_path / "missing.csv", kind, ManifestError)
    with pytest.raises(ManifestError, match="not a valid file name"):
        read_file("a\0b.csv", kind, ManifestError)
    (tmp_path / "ok.csv").write_bytes(b"x" * CSV_MAX_BYTES)  # exactly at the limit is fine
    assert len(read_file(tmp_path / "ok.csv", kind, ManifestError)) == CSV_MAX_BYTES


def test_photo_size_error_says_the_actual_size(tmp_path: Path) -> None:
    """Was "64 MiB, over the 64 MiB limit" for a file one byte over."""
    big = tmp_path / "big.jpg"
    with big.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ImageError) as caught:
        load_photo(big)
    assert str(caught.value) == (
        f"'{big}' is 64.0 MiB (67,108,865 bytes), over the 64 MiB limit: downscale or re-compress it."
    )
    assert caught.value.photo == str(big)


# -- the CLI: import, evaluate, consent grant --evidence -----------------------------------


@pytest.mark.usefixtures("fake_cli")
def test_import_refuses_special_and_oversized_manifests(specials: dict[str, Path], one_subject: Path) -> None:
    before = _state(one_subject)
    for name, path in specials.items():
        stderr = _one_line(runner.invoke(app, ["import", str(path), "-g", str(one_subject)]))
        assert f"Manifest '{path}'" in stderr, name
    assert _state(one_subject) == before


def test_evaluate_refuses_special_and_oversized_pairs_files(specials: dict[str, Path]) -> None:
    for name, path in specials.items():
        stderr = _one_line(runner.invoke(app, ["evaluate", str(path)]))
        assert f"Pairs file '{path}'" in stderr, name
    assert "over the 64 MiB limit" in _one_line(runner.invoke(app, ["evaluate", str(specials["big"])]))


def test_consent_grant_refuses_special_and_oversized_evidence(tmp_path: Path, one_subject: Path) -> None:
    before = _state(one_subject)
    fifo = tmp_path / "release.pdf"
    os.mkfifo(fifo)
    big = tmp_path / "scan.pdf"
    with big.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024 + 1)
    for path in (Path("/dev/zero"), fifo, tmp_path, big):
        result = runner.invoke(app, ["consent", "grant", "bob", "-g", str(one_subject), "--ref", "R2", "-p", "door",
                                     "--evidence", str(path)])
        stderr = _one_line(result, 2)  # a bad option value, as every other bad value of grant
        assert f"Evidence '{path}'" in stderr
    assert _state(one_subject) == before


@pytest.mark.parametrize("command", ["import", "evaluate"])
def test_a_fifo_never_blocks_the_cli(command: str, tmp_path: Path) -> None:
    """In a real process, with no writer ever coming: exit 1 at once, not a hang."""
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    args = [command, str(fifo)] + (["-g", str(tmp_path / "g.db")] if command == "import" else [])
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and "is not a regular file" in done.stderr
    assert not (tmp_path / "g.db").exists()


def test_identities_photos_go_through_the_photo_guard(tmp_path: Path) -> None:
    from consentmatch.evaluate import evaluate_identities

    person = tmp_path / "people" / "alice"
    person.mkdir(parents=True)
    fake_photo(person, "a.png", (10, 0))
    os.mkfifo(person / "b.jpg")
    result = evaluate_identities(tmp_path / "people", 0.6, encoder=FakeEncoder())
    assert [f.reason for f in result.failures if "b.jpg" in f.photo] == [
        f"'{person / 'b.jpg'}' is not a regular file (a device, pipe or socket): name a photo file."
    ]


# -- key files and key folders --------------------------------------------------------------


def test_key_file_must_be_a_small_regular_file(one_subject: Path, tmp_path: Path) -> None:
    before = _state(one_subject)
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo)
    big = tmp_path / "big.key"
    big.write_bytes(b"0" * (KEY_FILE_MAX_BYTES + 1))
    big.chmod(0o600)
    expected = {
        "/dev/zero": "is not a regular file",
        str(fifo): "is not a regular file",
        str(tmp_path): "is a directory",
        str(big): "is 4,097 bytes, over the 4 KiB limit",
    }
    for path, problem in expected.items():
        stderr = _one_line(runner.invoke(app, ["subjects", "-g", str(one_subject)], env={"CONSENTMATCH_KEY_FILE": path}))
        assert f"The gallery key file '{path}' {problem}" in stderr
    assert _state(one_subject) == before


def test_key_file_from_dev_zero_exits_at_once_in_a_real_process(one_subject: Path) -> None:
    done = subprocess.run([*CLI, "subjects", "-g", str(one_subject)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CONSENTMATCH_KEY_FILE": "/dev/zero"})
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "not a regular file" in done.stderr


def test_key_files_open_to_others_are_refused_like_ssh(tmp_path: Path) -> None:
    key_file = tmp_path / "gallery.key"
    key_file.write_text(generate_key())
    key_file.chmod(0o644)
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    env = {"CONSENTMATCH_KEY_FILE": str(key_file)}
    os.environ.update(env)
    try:
        with pytest.raises(EncryptionKeyError) as caught, Gallery(tmp_path / "g.db", encoder=FakeEncoder()) as gallery:
            gallery.enroll("alice", [photo], Consent("R1", ["door"]))
        assert str(caught.value) == (
            f"The gallery key file '{key_file}' is open to others (mode 0644): run `chmod 600 '{key_file}'`."
        )
        key_file.chmod(0o600)
        with Gallery(tmp_path / "g.db", encoder=FakeEncoder()) as gallery:
            gallery.enroll("alice", [photo], Consent("R1", ["door"]))
        key_file.chmod(0o640)
        stderr = _one_line(runner.invoke(app, ["subjects", "-g", str(tmp_path / "g.db")]))
        assert "mode 0640" in stderr and "chmod 600" in stderr
    finally:
        for name in env:
            os.environ.pop(name)


def test_key_folders_writable_by_others_are_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    with Gallery(tmp_path / "g.db", encoder=FakeEncoder(), key_dir=keys) as gallery:
        gallery.enroll("alice", [photo], Consent("R1", ["door"]))
    keys.chmod(0o777)
    with pytest.raises(EncryptionKeyError) as caught, Gallery(tmp_path / "g.db", key_dir=keys) as gallery:
        gallery.subjects()
    assert str(caught.value) == (
        f"The key folder '{keys}' is writable by others (mode 0777), who could swap the keys in it: "
        f"run `chmod 700 '{keys}'`."
    )
    keys.chmod(0o755)  # listable but not writable: its files are 0600 and only name gallery ids
    with Gallery(tmp_path / "g.db", key_dir=keys) as gallery:
        assert [s.subject for s in gallery.subjects()] == ["alice"]


# -- gallery files: modes and non-regular paths ----------------------------------------------


def test_new_galleries_and_their_wal_and_shm_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, which made them 0644
    try:
        path = tmp_path / "g.db"
        with Gallery(path, encoder=FakeEncoder()) as gallery:
            gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", ["door"]))
            files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
        assert modes == {"g.db": 0o600, "g.db-wal": 0o600, "g.db-shm": 0o600}
    finally:
        os.umask(old)


def test_a_device_or_fifo_as_gallery_is_refused_before_sqlite_opens_it(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo)
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    beside = [Path("/dev/null-journal"), Path("/dev/null-wal")]
    before = [p.stat().st_mtime_ns if p.exists() else None for p in beside]  # an older version may have left one
    for path in (Path("/dev/null"), Path("/dev/zero"), fifo):
        with pytest.raises(StorageError) as caught, Gallery(path, encoder=FakeEncoder()) as gallery:
            gallery.enroll("alice", [photo], Consent("R1", ["door"]))
        assert str(caught.value) == f"'{path}' is not a regular file (a device, pipe or socket): name a gallery file."
        stderr = _one_line(runner.invoke(app, ["subjects", "-g", str(path)]))
        assert "not a regular file" in stderr and "disk space" not in stderr
    assert [p.stat().st_mtime_ns if p.exists() else None for p in beside] == before
    assert stat.S_ISFIFO(fifo.stat().st_mode)
