"""The model cache's checks: a stamp spares the SHA-256 of an unchanged file, never of a changed one."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from consentmatch.vision import cache

DATA = bytes(range(256)) * 4096  # 1 MB


def _no_hashing(*args: object) -> None:
    raise AssertionError("hashed although the stamp vouches for the file")


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any file counts as settled: the tests need not wait two seconds."""
    monkeypatch.setattr(cache, "SETTLED_NS", 0)


def _changed_in_place(path: Path) -> None:
    """One byte flipped, same size, same inode, after the filesystem clock has ticked."""
    time.sleep(0.05)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with path.open("r+b") as handle:
        handle.write(bytes(data))


def test_a_fresh_file_gets_no_stamp(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    assert cache.write_checked(target, DATA)
    assert cache.read_checked(target) == DATA
    assert not (tmp_path / "model.onnx.verified").exists()  # written just now: a stamp could not tell a same-tick change


def test_an_unchanged_file_is_read_without_hashing(tmp_path: Path, settled: None, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.onnx"
    cache.write_checked(target, DATA)
    assert cache.read_checked(target) == DATA  # the full check, recorded
    assert (tmp_path / "model.onnx.verified").read_text().split()[0] == hashlib.sha256(DATA).hexdigest()
    monkeypatch.setattr(cache.hashlib, "sha256", _no_hashing)
    assert cache.read_checked(target) == DATA


@pytest.mark.parametrize("damage", ["flipped in place", "same bytes touched", "replaced", "truncated", "checksum changed"])
def test_a_file_changed_after_its_stamp_is_hashed_again(tmp_path: Path, settled: None, damage: str) -> None:
    target, checksum = tmp_path / "model.onnx", tmp_path / "model.onnx.sha256"
    cache.write_checked(target, DATA)
    assert cache.read_checked(target) == DATA
    if damage == "flipped in place":
        _changed_in_place(target)
    elif damage == "same bytes touched":  # mtime set back by hand: ctime still moves
        before = target.stat()
        time.sleep(0.05)
        target.write_bytes(DATA)
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    elif damage == "replaced":
        (tmp_path / "other").write_bytes(DATA[:-1] + b"\0")
        os.replace(tmp_path / "other", target)
    elif damage == "truncated":
        target.write_bytes(DATA[: len(DATA) // 2])
    else:
        checksum.write_text("0" * 64 + "  model.onnx\n")
    expected = DATA if damage == "same bytes touched" else None
    assert cache.read_checked(target) == expected


def test_a_damaged_model_is_rebuilt_despite_an_old_stamp(tmp_path: Path, settled: None) -> None:
    built: list[int] = []

    def build() -> bytes:
        built.append(1)
        return DATA

    assert cache.converted(tmp_path, "model.onnx", build) == DATA
    assert cache.converted(tmp_path, "model.onnx", build) == DATA  # checked and stamped
    assert (tmp_path / "model.onnx.verified").exists() and len(built) == 1
    _changed_in_place(tmp_path / "model.onnx")
    assert cache.converted(tmp_path, "model.onnx", build) == DATA
    assert len(built) == 2 and (tmp_path / "model.onnx").read_bytes() == DATA


def test_a_source_digest_is_remembered_until_the_source_changes(tmp_path: Path, settled: None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    source, folder = tmp_path / "weights.dat", tmp_path / "cache"
    source.write_bytes(DATA)
    digest = hashlib.sha256(DATA).hexdigest()
    assert cache.file_digest(source, folder) == digest
    with monkeypatch.context() as patched:
        patched.setattr(cache.hashlib, "sha256", _no_hashing)
        assert cache.file_digest(source, folder) == digest
    _changed_in_place(source)
    assert cache.file_digest(source, folder) == hashlib.sha256(source.read_bytes()).hexdigest() != digest
    assert cache.file_digest(source, None) == hashlib.sha256(source.read_bytes()).hexdigest()  # no folder: always hashed
