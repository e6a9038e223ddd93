"""A writer of the gallery file without the keys: renamed subjects, forged purposes, revived consents,
moved templates are refused as tampering, never obeyed (issue 12 C); e-mail hashes are keyed (H)."""

from __future__ import annotations

import hashlib
import hmac
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import psycopg
import pytest
from typer.testing import CliRunner

from consentmatch import ConsentError, Consent, Gallery, StorageError, TamperingError
from consentmatch.search import snapshot
from consentmatch.cli import app
from consentmatch.crypto import seal
from consentmatch.storage import is_url
from consentmatch.storage.keyring import MAC_KEY_ID, KeyRing
from consentmatch.storage.postgres_conn import pg_sql
from consentmatch.storage.migrations import APPLICATION_ID, MIGRATIONS

from .conftest import EXAMPLES, FakeEncoder, fake_encoding, fake_photo

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def _gallery(location: Path | str, **kwargs: object) -> Gallery:
    """The gallery at `location`: a file's keys beside it; a database's where the session keeps keys."""
    if is_url(location):
        return Gallery(location, encoder=FakeEncoder(), **kwargs)  # type: ignore[arg-type]
    return Gallery(location, encoder=FakeEncoder(), key_dir=Path(location).parent / "keys", **kwargs)  # type: ignore[arg-type]


# A forger declares the purpose too (the purposes table carries no MAC): the consent's MAC catches it.
_DECLARED = ("INSERT INTO purposes (name, declared_at) VALUES ('law-enforcement', '2026-01-01T00:00:00.000000+00:00') "
             "ON CONFLICT DO NOTHING")


def _raw(path: Path | str, *statements: str) -> None:
    """Edit the gallery as someone with write access to its file or database, and no keys."""
    if is_url(path):
        with psycopg.connect(str(path), autocommit=True) as pg:
            for statement in statements:
                pg.execute(pg_sql(statement, named=False).encode())
        return
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in statements:
        conn.execute(statement)
    conn.close()


def _two(tmp_path: Path, location: str | None = None) -> tuple[Path | str, Path, Path]:
    """alice and bob enrolled for 'door'; alice also for 'lobby' (at `location`, else in a new file)."""
    path: Path | str = location or tmp_path / "g.db"
    alice, bob = fake_photo(tmp_path, "a.png", (10, 0)), fake_photo(tmp_path, "b.png", (20, 0))
    with _gallery(path) as gallery:
        gallery.enroll("alice", [alice], Consent("R1", ["door", "lobby"]))
        gallery.enroll("bob", [bob], Consent("R2", ["door"]))
        assert gallery.match(alice, purpose="door").faces[0].subject == "alice"
    return path, alice, bob


SWAP = (
    "UPDATE subjects SET name = 'x' WHERE name = 'alice'",
    "UPDATE subjects SET name = 'alice' WHERE name = 'bob'",
    "UPDATE subjects SET name = 'bob' WHERE name = 'x'",
)


def test_a_name_swap_is_refused_as_tampering(gallery_location: str, tmp_path: Path) -> None:
    path, alice, _ = _two(tmp_path, gallery_location)
    _raw(path, *SWAP)
    with _gallery(path) as gallery, pytest.raises(TamperingError, match="integrity check .*restore the gallery from a backup"):
        gallery.match(alice, purpose="door")  # alice's face would be "bob"
    with _gallery(path) as gallery:
        with pytest.raises(TamperingError, match="the subject 'bob'"):
            gallery.verify("bob", alice, purpose="door")
        with pytest.raises(TamperingError):
            gallery.subjects()
        with pytest.raises(TamperingError):
            gallery.consents()
        check = gallery.verify_audit()
        assert not check.intact and check.broken_at is None
        assert "the subject" in (check.problem or "") and "fails its integrity check" in (check.problem or "")


def test_a_swap_under_a_gallery_held_open_is_refused(gallery_location: str, tmp_path: Path) -> None:
    """The live index holds the templates in memory: names come from the file at each search."""
    path, alice, _ = _two(tmp_path, gallery_location)
    with _gallery(path) as gallery:
        assert gallery.match(alice, purpose="door").faces[0].subject == "alice"
        _raw(path, *SWAP)
        with pytest.raises(TamperingError, match="the subject"):
            gallery.match(alice, purpose="door")


def test_a_template_moved_to_another_subject_is_refused_even_from_a_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot maps template ids to faces; which subject a row belongs to comes from the file."""
    monkeypatch.setattr(snapshot, "SNAPSHOT_FROM", 1)
    path, alice, _ = _two(tmp_path)
    with _gallery(path) as gallery:
        gallery.match(alice, purpose="door")  # builds the index, saved at close
    assert snapshot.path_for(path).exists()
    conn = sqlite3.connect(path, isolation_level=None)
    (state,) = conn.execute("SELECT value FROM meta WHERE key = 'templates_state'").fetchone()
    conn.execute("UPDATE templates SET subject_id = (SELECT id FROM subjects WHERE name = 'bob') "
                 "WHERE subject_id = (SELECT id FROM subjects WHERE name = 'alice')")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'templates_state'", (state,))  # the snapshot still fits
    conn.close()
    with _gallery(path) as gallery, pytest.raises(TamperingError, match="subject 'bob'"):
        gallery.match(alice, purpose="door")


def test_a_forged_purpose_is_refused(gallery_location: str, tmp_path: Path) -> None:
    path, _, bob = _two(tmp_path, gallery_location)
    _raw(path, "INSERT INTO consent_purposes (consent_id, purpose) "
               "SELECT id, 'law-enforcement' FROM consents WHERE reference = 'R2'", _DECLARED)
    with _gallery(path) as gallery:
        with pytest.raises(TamperingError, match="the consent record 'R2'"):
            gallery.match(bob, purpose="law-enforcement")
        with pytest.raises(TamperingError, match="the consent record 'R2'"):
            gallery.verify("bob", bob, purpose="law-enforcement")
        with pytest.raises(TamperingError, match="the consent record 'R2'"):
            gallery.consent("R2")
        with pytest.raises(TamperingError):
            gallery.enroll("bob", [bob], "R2")  # nor is the forged record built upon
        # a search for another purpose that does not return bob still works
        assert gallery.match(fake_photo(tmp_path, "a.png", (10, 0)), purpose="lobby").faces[0].subject == "alice"


def test_a_forged_row_with_its_mac_cleared_is_still_refused(gallery_location: str, tmp_path: Path) -> None:
    """Rows without a MAC are not 'from before the upgrade' once the key store says the gallery is bound."""
    path, _, bob = _two(tmp_path, gallery_location)
    _raw(path, "INSERT INTO consent_purposes (consent_id, purpose) SELECT id, 'law-enforcement' FROM consents", _DECLARED,
         "UPDATE consents SET mac = NULL", "UPDATE subjects SET mac = NULL",
         "UPDATE meta SET value = 'x' WHERE key = 'keys_checked'")
    with _gallery(path) as gallery, pytest.raises(TamperingError, match="the subject '(alice|bob)'"):
        gallery.match(bob, purpose="law-enforcement")


def test_a_revoked_consent_revived_by_sql_is_refused(gallery_location: str, tmp_path: Path) -> None:
    path, alice, _ = _two(tmp_path, gallery_location)
    with _gallery(path) as gallery:
        gallery.revoke_consent("R1")
    _raw(path, "UPDATE consents SET revoked_at = NULL WHERE reference = 'R1'")
    with _gallery(path) as gallery:
        with pytest.raises(TamperingError, match="the consent record 'R1'"):
            gallery.enroll("alice", [alice], "R1")
        with pytest.raises(TamperingError, match="the consent record 'R1'"):
            gallery.consents("alice")


def test_an_expired_consent_extended_by_sql_is_refused(gallery_location: str, tmp_path: Path) -> None:
    now = [T0]
    path, photo = gallery_location, fake_photo(tmp_path, "a.png", (10, 0))
    with _gallery(path, clock=lambda: now[0]) as gallery:
        gallery.enroll("alice", [photo], Consent("R1", ["door"], expires_at=T0 + timedelta(days=30)))
    now[0] = T0 + timedelta(days=31)
    with _gallery(path, clock=lambda: now[0]) as gallery:
        assert gallery.match(photo, purpose="door").faces[0].subject is None  # expired: not searched
    _raw(path, "UPDATE consents SET expires_at = NULL", "UPDATE subjects SET destroy_by = NULL")
    with _gallery(path, clock=lambda: now[0]) as gallery, pytest.raises(TamperingError):
        gallery.match(photo, purpose="door")


def test_a_plaintext_template_forged_into_a_bound_gallery_is_never_sealed(tmp_path: Path) -> None:
    """Plaintext rows are sealed at open only in galleries of schema 2, never once bound."""
    path, _, _ = _two(tmp_path)
    probe = fake_photo(tmp_path, "m.png", (30, 0))  # the forger's own face, as bob
    _raw(path, "INSERT INTO templates (subject_id, consent_id, embedding, photo_sha256, box, created_at) "
               f"SELECT s.id, c.id, x'{fake_encoding(30).astype('<f4').tobytes().hex()}', 'x', '[0,1,1,0]', 'now' "
               "FROM subjects s JOIN consents c ON c.subject_id = s.id WHERE s.name = 'bob'",
         "UPDATE meta SET value = 'x' WHERE key = 'keys_checked'")
    with _gallery(path) as gallery, pytest.raises(TamperingError, match="the templates of subject 'bob'"):
        gallery.match(probe, purpose="door")
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM templates WHERE length(embedding) = 512").fetchone() == (1,)
    conn.close()


def test_erasure_still_works_on_a_tampered_subject(gallery_location: str, tmp_path: Path) -> None:
    path, alice, bob = _two(tmp_path, gallery_location)
    _raw(path, "INSERT INTO consent_purposes (consent_id, purpose) "
               "SELECT id, 'law-enforcement' FROM consents WHERE reference = 'R2'", _DECLARED)
    with _gallery(path) as gallery:
        assert gallery.revoke_consent("R2").templates_removed == 1
        with pytest.raises(TamperingError, match="the consent record 'R2'"):
            gallery.consent("R2")  # revoking did not vouch for the forged purpose
        assert gallery.forget("bob").templates_removed == 0
        assert gallery.match(alice, purpose="door").faces[0].subject == "alice"
        assert gallery.verify_audit().intact


def test_erasure_strips_edited_requests_of_its_subject_and_never_shreds_a_key_they_name(
    gallery_location: str, tmp_path: Path
) -> None:
    """A held request whose row was edited is not refused by the erasure of its subject: its probe
    and result go, its MAC is not renewed (still refused), and a probe key the forger pointed at
    another subject's data key is not shredded."""
    path, alice, bob = _two(tmp_path, gallery_location)
    with _gallery(path) as gallery:
        gallery.set_policy("approval_purposes", "lobby")
        held = [gallery.request_verify("alice", alice, purpose="lobby", case_ref=f"C-{n}", reason="r", actor="desk-2")
                for n in (1, 2)]
    _raw(path, "UPDATE search_requests SET reason = 'forged' WHERE case_ref = 'C-1'",
         "UPDATE search_requests SET probe_key = (SELECT key_id FROM subjects WHERE name = 'bob') "
         "WHERE case_ref = 'C-2'")
    with _gallery(path) as gallery:
        with pytest.raises(TamperingError, match="search request"):
            gallery.search_requests()
        assert gallery.forget("alice").verified
        with gallery.context.store.read() as tx:
            assert [tx.request_probe(r.request_id) for r in held] == [None, None]
        with pytest.raises(TamperingError, match="search request"):
            gallery.search_requests()  # stripped, never vouched for
        assert gallery.match(bob, purpose="door").faces[0].subject == "bob"  # bob's key was not shredded
        assert [e.details["change"] for e in gallery.audit(action="request-erase")] == ["stripped", "stripped"]


def test_the_mac_key_is_never_shredded_nor_counted(tmp_path: Path) -> None:
    path, alice, _ = _two(tmp_path)
    _raw(path, f"UPDATE subjects SET key_id = '{MAC_KEY_ID}' WHERE name = 'bob'")
    with _gallery(path) as gallery:
        assert gallery.key_info().data_keys == 2  # alice's and bob's, not the MAC key
        gallery.forget("bob")
        assert gallery.match(alice, purpose="door").faces[0].subject == "alice"  # MACs still verify
    deks = sqlite3.connect(next((tmp_path / "keys").glob("*.deks")))
    assert deks.execute("SELECT count(*) FROM deks WHERE key_id = ?", (MAC_KEY_ID,)).fetchone() == (1,)
    deks.close()


def test_rotation_keeps_the_macs(tmp_path: Path) -> None:
    path, alice, bob = _two(tmp_path)
    with _gallery(path) as gallery:
        gallery.rotate_key()
        assert gallery.match(bob, purpose="door").faces[0].subject == "bob"
    with _gallery(path) as gallery:
        assert gallery.match(alice, purpose="lobby").faces[0].subject == "alice"
        assert [c.reference for c in gallery.consents()] == ["R1", "R2"]
        assert gallery.verify_audit().intact
        gallery.enroll("carol", [fake_photo(tmp_path, "c.png", (40, 0))], Consent("R3", ["door"]))
        assert len(gallery.subjects()) == 3


def test_audit_verify_reports_tampering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, _ = _two(tmp_path)
    monkeypatch.setenv("CONSENTMATCH_KEY_DIR", str(tmp_path / "keys"))
    runner = CliRunner()
    assert runner.invoke(app, ["audit", "-g", str(path), "--verify"]).exit_code == 0
    _raw(path, "INSERT INTO consent_purposes (consent_id, purpose) "
               "SELECT id, 'law-enforcement' FROM consents WHERE reference = 'R2'", _DECLARED)
    result = runner.invoke(app, ["audit", "-g", str(path), "--verify"])
    assert result.exit_code == 1
    assert "the consent record 'R2' fails its integrity check" in result.output
    result = runner.invoke(app, ["consent", "list", "-g", str(path)])
    assert result.exit_code == 1 and "restore the gallery from a backup" in result.output
    assert "Traceback" not in result.output


def _old_gallery(tmp_path: Path, email: str) -> tuple[Path, str]:
    """A gallery of schema 4 written as consentmatch wrote it then: templates sealed with the key id
    alone as associated data, no MACs, e-mails hashed under the salt in the file; returns its salt hash."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for number, step in enumerate(MIGRATIONS[:4], start=1):
        conn.executescript(f"BEGIN; {step}; PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {number}; COMMIT;")
    (gallery_id,) = conn.execute("SELECT value FROM meta WHERE key = 'gallery_id'").fetchone()
    (salt,) = conn.execute("SELECT value FROM meta WHERE key = 'optout_salt'").fetchone()
    legacy = hmac.new(bytes.fromhex(salt), email.encode(), hashlib.sha256).hexdigest()
    keys = KeyRing(key_dir=tmp_path / "keys")
    keys.open(gallery_id, created=False, create=True)
    moment = "2026-01-01T00:00:00.000000+00:00"
    for subject_id, (name, person) in enumerate((("alice", 10), ("bob", 20)), start=1):
        key_id = keys.new_subject_key()
        dek = keys.data_key(key_id)
        assert dek is not None
        conn.execute("INSERT INTO subjects (id, name, created_at, key_id) VALUES (?, ?, ?, ?)", (subject_id, name, moment, key_id))
        conn.execute("INSERT INTO consents (id, subject_id, reference, granted_at, email_hash) VALUES (?, ?, ?, ?, ?)",
                     (subject_id, subject_id, f"R{subject_id}", moment, legacy if name == "alice" else None))
        conn.execute("INSERT INTO consent_purposes VALUES (?, 'door')", (subject_id,))
        conn.execute("INSERT INTO templates (subject_id, consent_id, embedding, photo_sha256, box, created_at) "
                     "VALUES (?, ?, ?, 'x', '[0,1,1,0]', ?)",
                     (subject_id, subject_id, seal(dek, fake_encoding(person).astype("<f4").tobytes(), key_id.encode()), moment))
    conn.execute("INSERT INTO optouts (kind, value, added_at) VALUES ('email', ?, ?)", (legacy, moment))
    conn.execute("INSERT INTO meta (key, value) VALUES ('keys', 'created')")
    conn.close()
    keys.close()
    return path, legacy


def test_a_gallery_of_schema_4_is_bound_once_and_still_matches(tmp_path: Path) -> None:
    path, legacy = _old_gallery(tmp_path, "dora@example.com")
    backup = tmp_path / "backup.db"
    shutil.copyfile(path, backup)
    alice, bob = fake_photo(tmp_path, "a.png", (10, 0)), fake_photo(tmp_path, "b.png", (20, 0))
    with _gallery(path) as gallery:
        assert gallery.match(alice, purpose="door").faces[0].subject == "alice"
        assert gallery.match(bob, purpose="door").faces[0].subject == "bob"
        assert [c.reference for c in gallery.consents()] == ["R1", "R2"]
        assert gallery.verify_audit().intact
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    assert conn.execute("SELECT count(*) FROM subjects WHERE mac IS NULL").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM consents WHERE mac IS NULL").fetchone() == (0,)
    conn.close()
    _raw(path, *SWAP)  # after binding, the same edit is caught
    with _gallery(path) as gallery, pytest.raises(TamperingError):
        gallery.match(alice, purpose="door")
    # The old file again (a forger can present it too): the key store says the rows were bound,
    # so rows without a MAC are not vouched for now.
    shutil.copyfile(backup, path)
    with _gallery(path) as gallery, pytest.raises(TamperingError):
        gallery.consents()


def test_old_salted_email_hashes_still_match_and_new_ones_are_keyed(tmp_path: Path) -> None:
    path, legacy = _old_gallery(tmp_path, "dora@example.com")
    with _gallery(path) as gallery:
        with pytest.raises(ConsentError, match="do-not-enroll"):  # the opt-out stored under the old salt
            gallery.grant_consent("dora", Consent("R9", ["door"]), email="Dora@Example.com")
        receipts = gallery.add_optout(email="dora@example.com")  # finds alice's consent by its old hash
        assert [r.subject for r in receipts] == ["alice"]
        gallery.add_optout(email="erin@example.com")
        values = [o.value for o in gallery.optouts()]
        assert legacy in values
        assert gallery.remove_optout(email="dora@example.com")
        assert legacy not in [o.value for o in gallery.optouts()]
    conn = sqlite3.connect(path)
    (salt,) = conn.execute("SELECT value FROM meta WHERE key = 'optout_salt'").fetchone()
    (stored,) = conn.execute("SELECT value FROM optouts WHERE kind = 'email'").fetchone()
    conn.close()
    # the new hash is not the salted one: the file alone does not let anyone test addresses against it
    assert stored != hmac.new(bytes.fromhex(salt), b"erin@example.com", hashlib.sha256).hexdigest()


def test_a_new_gallery_keeps_no_salt_and_keys_its_email_hashes(tmp_path: Path) -> None:
    path, photo = tmp_path / "g.db", fake_photo(tmp_path, "a.png", (10, 0))
    with _gallery(path) as gallery:
        gallery.enroll("alice", [photo], Consent("R1", ["door"]), email="alice@example.com")
        gallery.add_optout(email="zed@example.com")
        with pytest.raises(ConsentError, match="do-not-enroll"):
            gallery.grant_consent("zed", Consent("R2", ["door"]), email=" ZED@example.com")
        assert [r.subject for r in gallery.add_optout(email="alice@example.com")] == ["alice"]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'optout_salt'").fetchone() is None
    hashes = {str(v) for (v,) in conn.execute("SELECT value FROM optouts")}
    conn.close()
    keys = KeyRing(key_dir=tmp_path / "keys")
    conn = sqlite3.connect(path)
    (gallery_id,) = conn.execute("SELECT value FROM meta WHERE key = 'gallery_id'").fetchone()
    conn.close()
    keys.open(gallery_id, created=True, create=False)
    key = hmac.new(keys.mac_key(), b"consentmatch e-mail hash", hashlib.sha256).digest()
    keys.close()
    assert hmac.new(key, b"zed@example.com", hashlib.sha256).hexdigest() in hashes


def test_the_issue_swap_with_real_photos(real_gallery_path: Path) -> None:
    """obama's face matched as "biden" after `UPDATE subjects SET name=...` (issue 12 C)."""
    _raw(real_gallery_path, "UPDATE subjects SET name = 'x' WHERE name = 'obama'",
         "UPDATE subjects SET name = 'obama' WHERE name = 'biden'",
         "UPDATE subjects SET name = 'biden' WHERE name = 'x'")
    with Gallery(real_gallery_path) as gallery, pytest.raises(StorageError, match="integrity check"):
        gallery.match(EXAMPLES / "probes" / "obama1.jpg", purpose="visitor-check-in")


def test_a_forged_purpose_with_real_photos(real_gallery_path: Path) -> None:
    _raw(real_gallery_path, "INSERT INTO consent_purposes (consent_id, purpose) "
                            "SELECT id, 'law-enforcement' FROM consents WHERE reference = 'REL-2026-0001'", _DECLARED)
    with Gallery(real_gallery_path) as gallery:
        with pytest.raises(TamperingError, match="REL-2026-0001"):
            gallery.match(EXAMPLES / "probes" / "alex_lacamoire1.jpg", purpose="law-enforcement")
        result = gallery.match(EXAMPLES / "probes" / "obama1.jpg", purpose="staff-access")
        assert result.faces[0].subject == "obama"
        assert np.isfinite(result.faces[0].distance or np.nan)


def test_two_processes_binding_an_old_gallery_at_once_agree(tmp_path: Path) -> None:
    """Both opens bind (or find it bound), under one MAC key; neither leaves a row failing."""
    import os
    import subprocess
    import sys

    path, _ = _old_gallery(tmp_path, "dora@example.com")
    code = (
        "import sys\nfrom consentmatch import Gallery\n"
        "with Gallery(sys.argv[1], key_dir=sys.argv[2], encoder=object()) as g:\n"
        "    print(sorted(c.reference for c in g.consents()))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    runs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(tmp_path / "keys")], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        assert out.strip() == "['R1', 'R2']"
    with _gallery(path) as gallery:
        assert gallery.verify_audit().intact
        assert gallery.match(fake_photo(tmp_path, "a.png", (10, 0)), purpose="door").faces[0].subject == "alice"
