"""Galleries that cannot be used: each a one-line StorageError (CLI: exit 1, one line), nothing changed.

A directory, a file that is not SQLite, another application's SQLite file, a truncated or
corrupted gallery, a gallery written by a newer schema, a missing folder, a read-only
filesystem and a full disk. Read-only and full filesystems are real mounts (a read-only bind
mount and a 1 MiB tmpfs): chmod cannot make a file read-only for root, who runs the tests here.
Without the right to mount, those tests skip and say why.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from consentmatch import Consent, Gallery, StorageError
from consentmatch.cli import app
from consentmatch.storage.migrations import MIGRATIONS

from .conftest import PURPOSE, FakeEncoder, fake_photo

runner = CliRunner()


@pytest.fixture(autouse=True)
def _fake_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("consentmatch.vision.default_encoder", lambda settings=None: FakeEncoder())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_storage_error(call: Callable[[], Any], path: Path) -> str:
    with pytest.raises(StorageError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    return message


def _cli_fails_in_one_line(*args: str | Path) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, (args, result.output)
    assert isinstance(result.exception, SystemExit), result.exception  # nothing escaped unmapped
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def _state(path: Path) -> list[tuple[str, int, tuple[str, ...]]]:
    with Gallery(path, encoder=FakeEncoder()) as gallery:
        assert gallery.verify_audit().intact
        return [(s.subject, s.templates, s.active_purposes) for s in gallery.subjects()]


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    return [fake_photo(tmp_path, f"p{i}.png", (10 + i, 0)) for i in range(4)]


def _uses(path: Path, photos: list[Path]) -> dict[str, Callable[[], Any]]:
    """Every kind of call a gallery gets: reads, a search, writes."""

    def gallery() -> Gallery:
        return Gallery(path, encoder=FakeEncoder())

    return {
        "subjects": lambda: gallery().subjects(),
        "match": lambda: gallery().match(photos[0], purpose=PURPOSE),
        "enroll": lambda: gallery().enroll("zed", [photos[3]], Consent("REF-Z", [PURPOSE])),
        "forget": lambda: gallery().forget("alice"),
        "grant_consent": lambda: gallery().grant_consent("yan", Consent("REF-Y", [PURPOSE])),
    }


# -- files that are not (usable) galleries ---------------------------------------------------


def _foreign_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('not faces')")
    conn.commit()
    conn.close()


def _newer_gallery(path: Path, photos: list[Path]) -> None:
    with Gallery(path, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [photos[0]], Consent("REF-A", [PURPOSE]))
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.commit()
    conn.close()


def _truncated_gallery(path: Path, photos: list[Path]) -> None:
    with Gallery(path, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [photos[0]], Consent("REF-A", [PURPOSE]))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BROKEN: dict[str, tuple[Callable[[Path, list[Path]], None], str]] = {
    "not SQLite": (lambda p, _: p.write_bytes(b"GIF89a" + bytes(range(256)) * 40), "not a readable consentmatch gallery"),
    "another application's SQLite": (lambda p, _: _foreign_sqlite(p), "not a consentmatch gallery"),
    "newer schema": (_newer_gallery, "newer consentmatch"),
    "truncated gallery": (_truncated_gallery, "not a readable consentmatch gallery"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_unusable_file_is_one_line_storage_error_and_left_alone(case: str, tmp_path: Path, photos: list[Path]) -> None:
    path = tmp_path / "gallery.db"
    make, expected = BROKEN[case]
    make(path, photos)
    for name, call in _uses(path, photos).items():
        before = _digest(path)
        assert expected in _one_line_storage_error(call, path), name
        assert _digest(path) == before, f"{name} changed the file"
    assert expected in _cli_fails_in_one_line("subjects", "-g", path)
    assert expected in _cli_fails_in_one_line("enroll", "zed", photos[3], "-g", path, "-c", "REF-Z", "-p", PURPOSE)
    assert expected in _cli_fails_in_one_line("forget", "alice", "--yes", "-g", path)


def test_another_applications_sqlite_file_is_not_modified(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    _foreign_sqlite(path)
    before = _digest(path)
    with pytest.raises(StorageError):
        Gallery(path, encoder=FakeEncoder()).subjects()
    conn = sqlite3.connect(path)
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert (mode, _digest(path)) == ("delete", before)


def test_directory_as_gallery_is_one_line_storage_error(tmp_path: Path, photos: list[Path]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, call in _uses(folder, photos).items():
        assert "is a directory" in _one_line_storage_error(call, folder), name
    assert list(folder.iterdir()) == []
    assert "is a directory" in _cli_fails_in_one_line("subjects", "-g", folder)
    assert "is a directory" in _cli_fails_in_one_line("enroll", "zed", photos[3], "-g", folder, "-c", "R", "-p", PURPOSE)


def test_gallery_in_a_missing_folder_is_one_line_storage_error(tmp_path: Path, photos: list[Path]) -> None:
    path = tmp_path / "no" / "such" / "gallery.db"
    _one_line_storage_error(lambda: Gallery(path, encoder=FakeEncoder()).enroll("a", [photos[0]], Consent("R", [PURPOSE])), path)
    _cli_fails_in_one_line("enroll", "zed", photos[3], "-g", path, "-c", "R", "-p", PURPOSE)
    assert not (tmp_path / "no").exists()


def test_installed_command_on_a_broken_gallery_prints_one_line(tmp_path: Path) -> None:
    path = tmp_path / "gallery.db"
    path.write_bytes(b"\x00garbage" * 100)
    done = subprocess.run(
        [sys.executable, "-c", "from consentmatch.cli import main; main()", "subjects", "-g", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # the environment is inherited (the gallery key too)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert done.stdout == ""


# -- read-only and full filesystems ----------------------------------------------------------


def _mount(*args: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to make a real read-only or full filesystem (chmod does not bind root)")
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount in this sandbox ({done.stderr.strip()}): read-only/disk-full paths untested")


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to unmount at the end, however the test ends."""
    points: list[Path] = []
    yield points
    for point in reversed(points):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture
def read_only(tmp_path: Path, photos: list[Path], mounts: list[Path]) -> tuple[Path, Path]:
    """A gallery (alice, bob) in a folder, and the same gallery seen through a read-only bind mount."""
    source, view = tmp_path / "rw", tmp_path / "ro"
    source.mkdir()
    view.mkdir()
    with Gallery(source / "gallery.db", encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [photos[0]], Consent("REF-A", [PURPOSE]))
        gallery.enroll("bob", [photos[1]], Consent("REF-B", [PURPOSE]))
    _mount("--bind", str(source), str(view))
    mounts.append(view)
    _mount("-o", "remount,bind,ro", str(view))
    probe = view / "probe"
    try:
        probe.write_text("x")
    except OSError:
        pass
    else:
        pytest.skip("the read-only bind mount accepted a write here")
    return source / "gallery.db", view / "gallery.db"


def test_read_only_gallery_refuses_writes_in_one_line_and_keeps_state(
    read_only: tuple[Path, Path], photos: list[Path]
) -> None:
    writable, path = read_only
    before = _state(writable)
    # While another process has the gallery open its -shm exists: reads work, writes are refused.
    with Gallery(writable, encoder=FakeEncoder()) as holder:
        holder.subjects()
        with Gallery(path, encoder=FakeEncoder()) as gallery:
            assert [s.subject for s in gallery.subjects()] == ["alice", "bob"]
        uses = _uses(path, photos)
        for name in ("enroll", "forget", "grant_consent"):
            assert "read-only" in _one_line_storage_error(uses[name], path), name
        assert "read-only" in _cli_fails_in_one_line("forget", "alice", "--yes", "-g", path)
        assert "read-only" in _cli_fails_in_one_line("enroll", "zed", photos[3], "-g", path, "-c", "R", "-p", PURPOSE)
    assert _state(writable) == before


def test_read_only_gallery_closed_cleanly_fails_in_one_line(read_only: tuple[Path, Path], photos: list[Path]) -> None:
    writable, path = read_only
    before = (_digest(writable), _state(writable))
    assert sorted(p.name for p in path.parent.iterdir()) == ["gallery.db"]  # no -wal, no -shm
    for _name, call in _uses(path, photos).items():  # WAL needs a -shm file: even reads fail
        _one_line_storage_error(call, path)
    _cli_fails_in_one_line("subjects", "-g", path)
    assert (_digest(writable), _state(writable)) == before


def test_read_only_gallery_closed_cleanly_says_read_only(read_only: tuple[Path, Path], photos: list[Path]) -> None:
    _, path = read_only
    message = _one_line_storage_error(_uses(path, photos)["subjects"], path)
    assert "read-only" in message


def test_disk_full_is_one_line_storage_error_and_keeps_state(tmp_path: Path, photos: list[Path], mounts: list[Path]) -> None:
    small = tmp_path / "small"
    small.mkdir()
    _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small))
    mounts.append(small)
    path = small / "gallery.db"
    with Gallery(path, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [photos[0]], Consent("REF-A", [PURPOSE]))
        gallery.enroll("bob", [photos[1]], Consent("REF-B", [PURPOSE]))
    before = _state(path)
    filler = os.open(small / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(filler, bytes(65536))
    except OSError:
        pass  # ENOSPC: the disk is full
    finally:
        os.close(filler)
    for name in ("enroll", "forget", "grant_consent"):
        message = _one_line_storage_error(_uses(path, photos)[name], path)
        assert "full" in message and "free disk space" in message, message
    assert "full" in _cli_fails_in_one_line("enroll", "zed", photos[3], "-g", path, "-c", "REF-Z", "-p", PURPOSE)
    assert "full" in _cli_fails_in_one_line("forget", "alice", "--yes", "-g", path)
    os.remove(small / "filler")
    assert _state(path) == before
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    with Gallery(path, encoder=FakeEncoder()) as gallery:  # space again: the gallery works as before
        gallery.enroll("zed", [photos[3]], Consent("REF-Z", [PURPOSE]))
        assert gallery.match(photos[3], purpose=PURPOSE).faces[0].subject == "zed"
        assert gallery.forget("alice").verified
