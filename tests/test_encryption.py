"""Templates at rest: sealed with per-subject keys outside the gallery; erasure shreds the key."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from consentmatch import Consent, EncryptionKeyError, Gallery
from consentmatch.crypto import SEALED_TEMPLATE_BYTES, generate_key, unseal
from consentmatch.storage import is_url
from consentmatch.storage.keyring import KeyRing

from .conftest import PURPOSE, FakeEncoder, fake_encoding, fake_photo


def _gallery(path: Path | str, **kwargs: object) -> Gallery:
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
    with pytest.raises(EncryptionKeyError, match=r"\(argument\) does not open this gallery: pass the key it was created with as Gallery\(key=\.\.\.\)"):
        _gallery(path, key=generate_key(), key_dir=tmp_path / "keys").subjects()
    monkeypatch.setenv("CONSENTMATCH_KEY", generate_key())
    with pytest.raises(EncryptionKeyError, match="does not open this gallery: set CONSENTMATCH_KEY to the key"):
        _gallery(path, key_dir=tmp_path / "keys").subjects()
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


def test_key_rotation(gallery_location: str, tmp_path: Path) -> None:
    path, keys = gallery_location, tmp_path / "keys"
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


def test_rotation_of_a_caller_held_key_takes_the_new_one(gallery_location: str, tmp_path: Path) -> None:
    key, new = generate_key(), generate_key()
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    with _gallery(gallery_location, key=key, key_dir=tmp_path / "keys") as gallery:
        gallery.enroll("alice", [photo], Consent("R1", ["door"]))
        with pytest.raises(EncryptionKeyError, match="store a new one first"):
            gallery.rotate_key()  # a key only in memory would be lost by a crash
        gallery.rotate_key(new_key=new)
    with _gallery(gallery_location, key=new, key_dir=tmp_path / "keys") as gallery:
        assert gallery.match(photo, purpose="door").faces[0].subject == "alice"


def test_plaintext_rows_of_schema_2_are_sealed_at_open(tmp_path: Path) -> None:
    from consentmatch.storage.migrations import APPLICATION_ID, MIGRATIONS

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

    monkeypatch.setattr("consentmatch.vision.default_encoder", lambda settings=None: FakeEncoder())
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
    from consentmatch.storage import keyring as keys_module

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


def _unopenable_data_keys(path: Path, keys: Path, key: str | None = None) -> list[str]:
    """The data keys in the key store that the gallery's current key does not unwrap."""
    from consentmatch.storage.keyring import KeyRing

    with _gallery(path, key=key, key_dir=keys) as gallery:
        gallery_id = gallery.key_info().gallery_id
    ring = KeyRing(key, keys)
    ring.open(gallery_id, created=True, create=False)
    assert ring._kek is not None
    deks = sqlite3.connect(keys / f"{gallery_id}.deks")
    try:
        return [k for k, w in deks.execute("SELECT key_id, wrapped FROM deks") if unseal(ring._kek, w, k.encode()) is None]
    finally:
        deks.close()
        ring.close()


def test_a_long_lived_gallery_enrolls_after_another_rotated_the_key(gallery_location: str, tmp_path: Path) -> None:
    path, keys = gallery_location, tmp_path / "keys"
    people = {name: fake_photo(tmp_path, f"{name}.png", (red, 0)) for name, red in [("alice", 10), ("bob", 20), ("carol", 30)]}
    with _gallery(path, key_dir=keys) as long_lived:
        long_lived.enroll("alice", [people["alice"]], Consent("R1", ["door"]))
        with _gallery(path, key_dir=keys) as other:
            other.rotate_key()  # the long-lived gallery still holds the old key in memory
        long_lived.enroll("bob", [people["bob"]], Consent("R2", ["door"]))  # a new data key: under the new key
        assert long_lived.match(people["bob"], purpose="door").faces[0].subject == "bob"
        long_lived.rotate_key()  # its own rotation starts from the current key, not the one it opened with
        long_lived.enroll("carol", [people["carol"]], Consent("R3", ["door"]))
    assert is_url(path) or _unopenable_data_keys(Path(path), keys) == []
    assert not list(keys.glob("*.next"))
    with _gallery(path, key_dir=keys) as fresh:
        for name, photo in people.items():
            assert fresh.match(photo, purpose="door").faces[0].subject == name
        assert [e.action for e in fresh.audit()].count("key-rotate") == 2
        assert fresh.verify_audit().intact
        fresh.forget("bob")  # erasable, and rotation still works
        fresh.rotate_key()


def test_a_gallery_reads_data_keys_wrapped_after_another_rotated_the_key(gallery_location: str, tmp_path: Path) -> None:
    path, keys = gallery_location, tmp_path / "keys"
    alice, bob = fake_photo(tmp_path, "a.png", (10, 0)), fake_photo(tmp_path, "b.png", (20, 0))
    with _gallery(path, key_dir=keys) as reader:
        reader.enroll("alice", [alice], Consent("R1", ["door"]))
        with _gallery(path, key_dir=keys) as other:
            other.rotate_key()
            other.enroll("bob", [bob], Consent("R2", ["door"]))
        # bob's data key was wrapped under a key this gallery has not loaded: it reloads the key
        assert reader.match(bob, purpose="door").faces[0].subject == "bob"
        assert reader.verify("bob", bob, purpose="door").match


def test_a_caller_held_key_rotated_elsewhere_is_refused_clearly(gallery_location: str, tmp_path: Path) -> None:
    path, keys = gallery_location, tmp_path / "keys"
    key, new = generate_key(), generate_key()
    alice, bob = fake_photo(tmp_path, "a.png", (10, 0)), fake_photo(tmp_path, "b.png", (20, 0))
    with _gallery(path, key=key, key_dir=keys) as held:
        held.enroll("alice", [alice], Consent("R1", ["door"]))
        with _gallery(path, key=key, key_dir=keys) as other:
            other.rotate_key(new_key=new)
        with pytest.raises(EncryptionKeyError, match="rotated by another process.*open the gallery again with the new key"):
            held.enroll("bob", [bob], Consent("R2", ["door"]))
    assert is_url(path) or _unopenable_data_keys(Path(path), keys, new) == []
    with _gallery(path, key=new, key_dir=keys) as fresh:
        assert [s.subject for s in fresh.subjects()] == ["alice"]  # nothing of bob's was written
        assert fresh.match(alice, purpose="door").faces[0].subject == "alice"
        fresh.enroll("bob", [bob], Consent("R2", ["door"]))


def test_a_rotation_that_took_effect_is_audited_even_after_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from consentmatch.storage.sqlite_rows import SqliteTransaction

    path, keys = tmp_path / "g.db", tmp_path / "keys"
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    with _gallery(path, key_dir=keys, actor="ops-1") as gallery:
        gallery.enroll("alice", [photo], Consent("R1", ["door"]))
    real_append = SqliteTransaction.append_audit

    def crash_at_the_rotation_event(tx: SqliteTransaction, **event: object) -> int:
        if event["action"] == "key-rotate":
            raise KeyboardInterrupt  # stands for a kill after the key store committed, before the gallery did
        return real_append(tx, **event)  # type: ignore[arg-type]

    old = next(keys.glob("*.key")).read_text()
    monkeypatch.setattr(SqliteTransaction, "append_audit", crash_at_the_rotation_event)
    with pytest.raises(KeyboardInterrupt), _gallery(path, key_dir=keys, actor="ops-1") as gallery:
        gallery.rotate_key()
    monkeypatch.setattr(SqliteTransaction, "append_audit", real_append)
    assert next(keys.glob("*.key")).read_text() != old  # the rotation took effect
    for _ in range(2):  # recorded at the next open, and once only
        with _gallery(path, key_dir=keys) as gallery:
            assert gallery.match(photo, purpose="door").faces[0].subject == "alice"
            rotations = [e for e in gallery.audit() if e.action == "key-rotate"]
            assert [(e.actor, e.details["data_keys"]) for e in rotations] == [("ops-1", 1)]
            assert gallery.verify_audit().intact
    assert not list(keys.glob("*.next"))


def test_a_next_key_file_left_by_a_rotation_killed_before_its_commit_is_removed(tmp_path: Path) -> None:
    path, keys = tmp_path / "g.db", tmp_path / "keys"
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    with _gallery(path, key_dir=keys) as gallery:
        gallery.enroll("alice", [photo], Consent("R1", ["door"]))
    key_file = next(keys.glob("*.key"))
    old = key_file.read_text()
    stale = key_file.with_name(key_file.name + ".next")
    stale.write_text(generate_key())  # what a rotation killed before its commit leaves
    with _gallery(path, key_dir=keys) as gallery:
        assert gallery.match(photo, purpose="door").faces[0].subject == "alice"
    assert not stale.exists() and key_file.read_text() == old
    assert not [e for e in _gallery(path, key_dir=keys).audit() if e.action == "key-rotate"]


def test_a_restored_backup_does_not_bring_erased_consents_back(tmp_path: Path) -> None:
    path, backup, keys = tmp_path / "g.db", tmp_path / "backup.db", tmp_path / "keys"
    photos = {name: fake_photo(tmp_path, f"{name}.png", (red, 0)) for name, red in [("alice", 10), ("bob", 20), ("carol", 30)]}
    with _gallery(path, key_dir=keys) as gallery:
        for number, (name, photo) in enumerate(photos.items()):
            gallery.enroll(name, [photo], Consent(f"R{number}", ["door"]))
    shutil.copyfile(path, backup)  # last night's backup
    with _gallery(path, key_dir=keys) as gallery:
        gallery.forget("alice")
        gallery.add_optout(subject="bob")
    shutil.copyfile(backup, path)  # the backup comes back: alice's and bob's consents in it are active
    with _gallery(path, key_dir=keys) as gallery:
        infos = {s.subject: s for s in gallery.subjects()}
        assert {n: (i.templates, i.active_purposes) for n, i in infos.items()} == {
            "alice": (0, ()), "bob": (0, ()), "carol": (1, ("door",))}
        assert [(c.subject, c.active) for c in gallery.consents()] == [("alice", False), ("bob", False), ("carol", True)]
        for name in ("alice", "bob"):  # erased: a non-match, as for a name never enrolled (issue 24)
            assert not gallery.verify(name, photos[name], purpose="door").match
        revoked = [e for e in gallery.audit() if e.action == "consent-revoke"]
        assert [(e.subject, e.details["consents"]) for e in revoked] == [("alice", ["R0"]), ("bob", ["R1"])]
        assert "shredded" in revoked[0].details["reason"]
        assert gallery.verify_audit().intact
    with _gallery(path, key_dir=keys) as gallery:  # once: the next open finds nothing more to do
        assert [e.action for e in gallery.audit()].count("consent-revoke") == 2


def test_opening_a_restored_backup_while_another_process_enrolls_keeps_the_new_subject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gallery whose shred stamp is out of date (a restored backup) looks for subjects whose key
    was shredded. A subject another writer commits while it looks has its key stored already:
    it must not be taken for an erased one (its templates deleted, its consent revoked)."""
    path, backup = tmp_path / "g.db", tmp_path / "backup.db"
    alice, bob = fake_photo(tmp_path, "a.png", (10, 0)), fake_photo(tmp_path, "b.png", (20, 0))
    with _gallery(path, key_dir=tmp_path / "keys") as gallery:
        gallery.enroll("alice", [alice], Consent("R1", ["door"]))
    shutil.copyfile(path, backup)
    with _gallery(path, key_dir=tmp_path / "keys") as gallery:
        gallery.forget("alice")
    shutil.copyfile(backup, path)  # its stamp predates the erasure: the next open checks every subject
    with _gallery(path, key_dir=tmp_path / "keys") as writer:
        writer.subjects()  # opened (and checked) before the race below
        original, raced = KeyRing.key_ids, []

        def key_ids_then_a_writer_commits(self: KeyRing) -> set[str]:
            known = original(self)
            if not raced:  # between the key ids read and the subjects read, bob is enrolled elsewhere
                raced.append(writer.enroll("bob", [bob], Consent("R2", ["door"])))
            return known

        monkeypatch.setattr(KeyRing, "key_ids", key_ids_then_a_writer_commits)
        with sqlite3.connect(path) as conn:  # the stamp out of date again, as the restore left it
            conn.execute("UPDATE meta SET value = 'stale' WHERE key = 'keys_checked'")
        with _gallery(path, key_dir=tmp_path / "keys") as reader:
            subjects = {s.subject: s.templates for s in reader.subjects()}
            assert raced and subjects == {"alice": 0, "bob": 1}
            assert [c.subject for c in reader.match(bob, purpose="door").faces[0].candidates] == ["bob"]


def test_a_file_copy_gets_a_key_folder_of_its_own_or_is_refused(tmp_path: Path) -> None:
    """`copy a.db b.db` in one key folder once shared the data keys: forgetting someone in the
    copy erased them in the source (a newcomer's finding). Refused now, with --key-dir to fix it."""
    from typer.testing import CliRunner

    from consentmatch.cli import app

    source, target, keys = tmp_path / "desk.db", tmp_path / "trial.db", tmp_path / "trial-keys"
    alice = fake_photo(tmp_path, "a.png", (10, 0))
    with Gallery(source, encoder=FakeEncoder()) as g:
        g.enroll("alice", [alice], Consent("R1", [PURPOSE]))
        head = g.verify_audit().head
    runner = CliRunner()
    refused = runner.invoke(app, ["copy", str(source), str(target)])
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
    assert "would share the data keys" in refused.stderr and "--key-dir DIR" in refused.stderr
    assert not target.exists() and not keys.exists()
    copied = runner.invoke(app, ["copy", str(source), str(target), "--key-dir", str(keys), "--json"])
    assert copied.exit_code == 0, copied.stderr
    assert {p.suffix for p in keys.iterdir()} == {".key", ".deks"}  # the copy's own key store, and the same key
    with Gallery(target, encoder=FakeEncoder(), key_dir=keys) as trial:
        assert trial.verify_audit().head == head
        trial.forget("alice")
    with Gallery(source, encoder=FakeEncoder()) as g:  # the source keeps alice
        assert [s.subject for s in g.subjects()] == ["alice"]
        assert g.match(alice, purpose=PURPOSE).faces[0].subject == "alice"
