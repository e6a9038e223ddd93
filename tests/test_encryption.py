"""Templates at rest: sealed with per-subject keys outside the gallery; erasure shreds the key."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from consentmatch import Consent, EncryptionKeyError, Gallery
from consentmatch.keys import SEALED_TEMPLATE_BYTES, generate_key, unseal

from .conftest import FakeEncoder, fake_encoding, fake_photo


def _gallery(path: Path, **kwargs: object) -> Gallery:
    return Gallery(path, encoder=FakeEncoder(), **kwargs)  # type: ignore[arg-type]


def _files(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_no_plaintext_template_on_disk(tmp_path: Path) -> None:
    gallery_dir, key_dir = tmp_path / "gallery", tmp_path / "keys"
    gallery_dir.mkdir()
    with _gallery(gallery_dir / "g.db", key_dir=key_dir) as gallery:
        gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", ["door"]))
        gallery.match(tmp_path / "a.png", purpose="door")
        plaintext = fake_encoding(10).astype("<f4").tobytes()
        for chunk in (plaintext[:64], plaintext[200:264]):
            assert chunk not in _files(gallery_dir)  # database, WAL and shared memory while open
    assert plaintext[:64] not in _files(gallery_dir) and plaintext[:64] not in _files(key_dir)
    conn = sqlite3.connect(gallery_dir / "g.db")
    ((blob, key_id, template_id, subject_id, name),) = conn.execute(
        "SELECT t.embedding, s.key_id, t.id, s.id, s.name FROM templates t JOIN subjects s ON s.id = t.subject_id"
    )
    (gallery_id,) = conn.execute("SELECT value FROM meta WHERE key = 'gallery_id'").fetchone()
    conn.close()
    assert len(blob) == SEALED_TEMPLATE_BYTES
    assert sorted(p.suffix for p in key_dir.iterdir()) == [".deks", ".key"]
    assert (key_dir.stat().st_mode & 0o777) == 0o700
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in key_dir.iterdir())
    # the key file opens it: the gallery key unwraps the data key, which opens the template
    gallery_key = bytes.fromhex(next(key_dir.glob("*.key")).read_text())
    deks = sqlite3.connect(next(key_dir.glob("*.deks")))
    (wrapped,) = deks.execute("SELECT wrapped FROM deks WHERE key_id = ?", (key_id,)).fetchone()
    deks.close()
    dek = unseal(gallery_key, wrapped, key_id.encode())
    assert dek is not None
    # the associated data binds the template to the gallery, its row and its subject (store.py)
    aad = f'["template","{gallery_id}",{subject_id},"{name}","{key_id}"]#{template_id}'.encode()
    assert np.array_equal(np.frombuffer(unseal(dek, blob, aad) or b"", "<f4"), fake_encoding(10))
    assert unseal(dek, blob, key_id.encode()) is None


def test_missing_or_wrong_key_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "g.db"
    with _gallery(path, key_dir=tmp_path / "keys") as gallery:
        gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", ["door"]))
    with pytest.raises(EncryptionKeyError, match="data keys of this gallery are missing"):
        _gallery(path, key_dir=tmp_path / "elsewhere").subjects()
    with pytest.raises(EncryptionKeyError, match="does not open this gallery"):
        _gallery(path, key=generate_key(), key_dir=tmp_path / "keys").subjects()
    monkeypatch.setenv("CONSENTMATCH_KEY", "not-hex")
    with pytest.raises(EncryptionKeyError, match="64 hex digits"):
        _gallery(path, key_dir=tmp_path / "keys").subjects()


def test_key_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENTMATCH_KEY", generate_key())
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    with _gallery(tmp_path / "g.db", key_dir=tmp_path / "keys") as gallery:
        gallery.enroll("alice", [photo], Consent("R1", ["door"]))
    assert not list((tmp_path / "keys").glob("*.key"))  # no key file written: the key is the caller's
    with _gallery(tmp_path / "g.db", key_dir=tmp_path / "keys") as gallery:
        assert gallery.match(photo, purpose="door").faces[0].subject == "alice"


def test_a_backup_restored_after_erasure_cannot_bring_the_subject_back(tmp_path: Path) -> None:
    path, backup = tmp_path / "g.db", tmp_path / "backup.db"
    alice, bob = fake_photo(tmp_path, "a.png", (10, 0)), fake_photo(tmp_path, "b.png", (20, 0))
    with _gallery(path, key_dir=tmp_path / "keys") as gallery:
        gallery.enroll("alice", [alice], Consent("R1", ["door"]))
        gallery.enroll("bob", [bob], Consent("R2", ["door"]))
    shutil.copyfile(path, backup)
    with _gallery(path, key_dir=tmp_path / "keys") as gallery:
        assert gallery.forget("alice").verified
    shutil.copyfile(backup, path)  # the old file comes back, with alice's sealed template in it
    with _gallery(path, key_dir=tmp_path / "keys") as gallery:
        assert [c.subject for c in gallery.match(alice, purpose="door").faces[0].candidates] == ["bob"]
        assert {s.subject: s.templates for s in gallery.subjects()} == {"alice": 0, "bob": 1}


def test_revocation_shreds_and_reenrollment_gets_a_new_key(tmp_path: Path) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    with _gallery(tmp_path / "g.db", key_dir=tmp_path / "keys") as gallery:
        gallery.enroll("alice", [photo], Consent("R1", ["door"]))
        conn = sqlite3.connect(tmp_path / "g.db")
        (first,) = conn.execute("SELECT key_id FROM subjects").fetchone()
        gallery.revoke_consent("R1")
        assert conn.execute("SELECT key_id FROM subjects").fetchone() == (None,)
        gallery.enroll("alice", [photo], Consent("R2", ["door"]))
        (second,) = conn.execute("SELECT key_id FROM subjects").fetchone()
        conn.close()
        assert second != first
        assert gallery.match(photo, purpose="door").faces[0].subject == "alice"
    deks = sqlite3.connect(next((tmp_path / "keys").glob("*.deks")))
    assert [r[0] for r in deks.execute("SELECT key_id FROM deks WHERE key_id NOT LIKE 'mac-%'")] == [second]
    deks.close()


def test_key_rotation(tmp_path: Path) -> None:
    path, keys = tmp_path / "g.db", tmp_path / "keys"
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    with _gallery(path, key_dir=keys) as gallery:
        gallery.enroll("alice", [photo], Consent("R1", ["door"]))
        old = next(keys.glob("*.key")).read_text()
        info = gallery.rotate_key()
        assert info.data_keys == 1  # the default key file was replaced
    assert not list(keys.glob("*.next"))
    assert next(keys.glob("*.key")).read_text() != old
    with pytest.raises(EncryptionKeyError, match="does not open"):
        _gallery(path, key=old, key_dir=keys).subjects()
    with _gallery(path, key_dir=keys) as gallery:
        assert gallery.match(photo, purpose="door").faces[0].subject == "alice"
        assert gallery.audit()[-2].action == "key-rotate"  # then the match


def test_rotation_of_a_caller_held_key_takes_the_new_one(tmp_path: Path) -> None:
    key, new = generate_key(), generate_key()
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    with _gallery(tmp_path / "g.db", key=key, key_dir=tmp_path / "keys") as gallery:
        gallery.enroll("alice", [photo], Consent("R1", ["door"]))
        with pytest.raises(EncryptionKeyError, match="store a new one first"):
            gallery.rotate_key()  # a key only in memory would be lost by a crash
        gallery.rotate_key(new_key=new)
    with _gallery(tmp_path / "g.db", key=new, key_dir=tmp_path / "keys") as gallery:
        assert gallery.match(photo, purpose="door").faces[0].subject == "alice"


def test_plaintext_rows_of_schema_2_are_sealed_at_open(tmp_path: Path) -> None:
    from consentmatch.migrations import APPLICATION_ID, MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for number, step in enumerate(MIGRATIONS[:2], start=1):
        conn.executescript(f"BEGIN; {step}; PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {number}; COMMIT;")
    conn.execute("INSERT INTO subjects (name, created_at) VALUES ('alice', '2026-01-01T00:00:00.000000+00:00')")
    conn.execute("INSERT INTO consents (subject_id, reference, granted_at) VALUES (1, 'R1', '2026-01-01T00:00:00.000000+00:00')")
    conn.execute("INSERT INTO consent_purposes VALUES (1, 'door')")
    conn.execute("INSERT INTO templates (subject_id, consent_id, embedding, photo_sha256, box, created_at) "
                 "VALUES (1, 1, ?, 'x', '[0,1,1,0]', '2026-01-01T00:00:00.000000+00:00')",
                 (fake_encoding(10).astype("<f4").tobytes(),))
    conn.close()
    with _gallery(path, key_dir=tmp_path / "keys") as gallery:
        assert gallery.match(fake_photo(tmp_path, "a.png", (10, 0)), purpose="door").faces[0].subject == "alice"
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT length(embedding) FROM templates").fetchone() == (SEALED_TEMPLATE_BYTES,)
    assert raw.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    raw.close()
    assert fake_encoding(10).astype("<f4").tobytes()[:64] not in path.read_bytes()


def test_key_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from consentmatch.cli import app

    monkeypatch.setattr("consentmatch.encoder.default_encoder", lambda: FakeEncoder())
    runner = CliRunner()
    key = runner.invoke(app, ["key", "generate"]).stdout.strip()
    assert len(bytes.fromhex(key)) == 32
    env = {"CONSENTMATCH_GALLERY": str(tmp_path / "g.db"), "CONSENTMATCH_KEY": key}
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    assert runner.invoke(app, ["enroll", "alice", str(photo), "-c", "R1", "-p", "door"], env=env).exit_code == 0
    info = json.loads(runner.invoke(app, ["key", "info", "--json"], env=env).stdout)
    assert info["key_source"] == "CONSENTMATCH_KEY" and info["data_keys"] == 1 and "new_key" not in info
    refused = runner.invoke(app, ["key", "rotate"], env=env)
    assert refused.exit_code == 2 and "--new-key-file" in refused.stderr
    result = runner.invoke(app, ["key", "rotate", "--new-key-file", str(tmp_path / "new.key")], env=env)
    assert result.exit_code == 0, result.output
    assert key not in result.output
    new = (tmp_path / "new.key").read_text()
    assert (tmp_path / "new.key").stat().st_mode & 0o777 == 0o600
    assert runner.invoke(app, ["subjects"], env=env).exit_code == 1  # the old key no longer opens it
    ok = runner.invoke(app, ["match", str(photo), "-p", "door", "--json"], env={**env, "CONSENTMATCH_KEY": new})
    assert json.loads(ok.stdout)["faces"][0]["subject"] == "alice"


def test_a_rotation_cut_short_is_finished_at_the_next_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from consentmatch import keys as keys_module

    path, keys = tmp_path / "g.db", tmp_path / "keys"
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    with _gallery(path, key_dir=keys) as gallery:
        gallery.enroll("alice", [photo], Consent("R1", ["door"]))
    real_replace = keys_module.os.replace

    def crash_before_the_key_file_moves(source: str, target: str) -> None:
        if str(source).endswith(".next"):
            raise KeyboardInterrupt  # stands for a kill between the commit and the rename
        real_replace(source, target)

    monkeypatch.setattr(keys_module.os, "replace", crash_before_the_key_file_moves)
    with pytest.raises(KeyboardInterrupt), _gallery(path, key_dir=keys) as gallery:
        gallery.rotate_key()
    monkeypatch.setattr(keys_module.os, "replace", real_replace)
    assert list(keys.glob("*.next"))  # the new key waits beside the old one
    with _gallery(path, key_dir=keys) as gallery:
        assert gallery.match(photo, purpose="door").faces[0].subject == "alice"
    assert not list(keys.glob("*.next"))
