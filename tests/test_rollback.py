"""A writer of the database who lacks the keys rolls a row back or forges the change log (issue 24,
item 10): a revoked API key brought back by restoring its old row (whose MAC was once true) is
refused, and so is a forged `template_changes` row, on each store; `audit --verify` reports both."""

from __future__ import annotations

import shutil
import sqlite3
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest

from consentmatch import Consent, Gallery, TamperingError
from consentmatch.errors import AuthenticationError
from consentmatch.services import access
from consentmatch.settings import Settings
from consentmatch.storage import Commit, KeyRing, is_url, open_store

from .conftest import PURPOSE, FakeEncoder, fake_photo


def _sql(location: str, statement: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement as someone with write access to the gallery's database, and no keys."""
    if is_url(location):
        with psycopg.connect(location, autocommit=True) as pg:
            cursor = pg.execute(statement.replace("?", "%s"), parameters)
            return list(cursor.fetchall()) if cursor.description else []
    conn = sqlite3.connect(location, isolation_level=None)
    try:
        return conn.execute(statement, parameters).fetchall()
    finally:
        conn.close()


def test_a_revoked_api_key_rolled_back_by_sql_is_refused(gallery_location: str, tmp_path: Any) -> None:
    with Gallery(gallery_location, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", [PURPOSE]))
        desk = gallery.create_api_key("desk-1", roles=["operator"], purposes=[PURPOSE])
        gallery.create_api_key("chief-1", roles=["approver"])
        (before,) = _sql(gallery_location, "SELECT revoked_at, mac FROM api_keys WHERE name = 'desk-1'")
        assert gallery.revoke_api_key("desk-1")
    # The row as it was before the revocation: its MAC held then, and still does.
    _sql(gallery_location, "UPDATE api_keys SET revoked_at = ?, mac = ? WHERE name = 'desk-1'", before)
    with Gallery(gallery_location, encoder=FakeEncoder()) as gallery:
        with pytest.raises((TamperingError, AuthenticationError)):
            access.authenticate(gallery.context, desk.key)
        check = gallery.verify_audit()
        assert not check.intact and "the API key 'desk-1'" in (check.problem or "")


def test_an_api_key_given_a_role_by_sql_is_reported(gallery_location: str, tmp_path: Any) -> None:
    """A role added to a live key's row (the MAC covers every column) is reported by `audit --verify`."""
    with Gallery(gallery_location, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", [PURPOSE]))
        gallery.create_api_key("desk-1", roles=["operator"], purposes=[PURPOSE])
    _sql(gallery_location, "UPDATE api_keys SET roles = '[\"admin\"]' WHERE name = 'desk-1'")
    with Gallery(gallery_location, encoder=FakeEncoder()) as gallery:
        check = gallery.verify_audit()
        assert not check.intact and "the API key 'desk-1'" in (check.problem or "")


def test_revoked_and_live_keys_verify_intact(gallery_location: str, tmp_path: Any) -> None:
    with Gallery(gallery_location, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", [PURPOSE]))
        desk = gallery.create_api_key("desk-1", roles=["operator"], purposes=[PURPOSE])
        gallery.create_api_key("desk-2", roles=["operator"], purposes=[PURPOSE])
        assert gallery.revoke_api_key("desk-2")
    with Gallery(gallery_location, encoder=FakeEncoder()) as gallery:
        assert access.authenticate(gallery.context, desk.key).name == "desk-1"
        assert gallery.verify_audit().intact


def test_a_forged_template_change_leaves_no_node_desynced(pg_url: str, tmp_path: Any) -> None:
    """Node B follows node A's commits through the change log; a forged row saying alice's template
    was deleted must not drop her from B's index, and `audit --verify` must say the log was forged."""
    alice = fake_photo(tmp_path, "a.png", (10, 0))
    bob = fake_photo(tmp_path, "b.png", (20, 0))
    with Gallery(pg_url, encoder=FakeEncoder()) as node_a, Gallery(pg_url, encoder=FakeEncoder()) as node_b:
        node_a.enroll("alice", [alice], Consent("R1", [PURPOSE]))
        assert node_b.match(alice, purpose=PURPOSE).faces[0].subject == "alice"  # B's index built
        node_a.enroll("bob", [bob], Consent("R2", [PURPOSE]))
        assert node_b.match(bob, purpose=PURPOSE).faces[0].subject == "bob"  # B caught up from the log
        (template_id,) = _sql(pg_url, "SELECT t.id FROM templates t JOIN subjects s ON s.id = t.subject_id "
                                      "WHERE s.name = 'alice'")[0]
        (generation,) = _sql(pg_url, "SELECT CAST(value AS bigint) + 1 FROM meta WHERE key = 'generation'")[0]
        _sql(pg_url, "INSERT INTO template_changes (generation, template_id, added) VALUES (?, ?, false)",
             (generation, template_id))
        _sql(pg_url, "UPDATE meta SET value = ? WHERE key = 'generation'", (str(generation),))
        faces = node_b.match(alice, purpose=PURPOSE).faces
        assert faces and faces[0].subject == "alice"
        check = node_b.verify_audit()
        assert not check.intact and "change log" in (check.problem or "")


def test_a_backup_restored_after_an_erasure_stays_erased_and_the_listeners_hear_it(tmp_path: Any) -> None:
    """The open drops the rows of a shredded key and tells the listeners, as PostgreSQL's open does
    (SQLite's moved the generation silently before: an index then learned it only by being dropped)."""
    path, backup = tmp_path / "g.db", tmp_path / "backup.db"
    alice = fake_photo(tmp_path, "a.png", (10, 0))
    with Gallery(path, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [alice], Consent("R1", [PURPOSE]))
        gallery.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], Consent("R2", [PURPOSE]))
    (alice_template,) = _sql(str(path), "SELECT t.id FROM templates t JOIN subjects s ON s.id = t.subject_id "
                                        "WHERE s.name = 'alice'")
    shutil.copyfile(path, backup)
    with Gallery(path, encoder=FakeEncoder()) as gallery:
        gallery.forget("alice")
    shutil.copyfile(backup, path)
    store = open_store(path, KeyRing(), Settings.from_env())
    commits: list[Commit] = []
    store.on_commit(commits.append)
    try:
        with store.read() as tx:
            assert tx.subject_id("alice") is not None and tx.template_count(tx.subject_id("alice") or 0) == 0
    finally:
        store.close()
    assert [c.removed_ids.tolist() for c in commits] == [list(alice_template)]
    with Gallery(path, encoder=FakeEncoder()) as gallery:
        assert gallery.match(alice, purpose=PURPOSE).faces[0].subject is None


def test_live_keys_of_a_database_from_before_the_marks_still_open(pg_url: str, tmp_path: Any) -> None:
    """A PostgreSQL gallery whose keys database holds no marks yet (written before them) gives its
    live keys theirs at the first open, and only them (the SQLite case: tests/test_formats.py)."""
    with Gallery(pg_url, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", [PURPOSE]))
        desk = gallery.create_api_key("desk-1", roles=["operator"], purposes=[PURPOSE])
        old = gallery.create_api_key("old-1", roles=["operator"], purposes=[PURPOSE])
        assert gallery.revoke_api_key("old-1")
    database = pg_url.split("?")[0].rsplit("/", 1)[1]
    keys_url = pg_url.replace(f"/{database}", f"/{database}_keys", 1)  # where PgStore keeps the data keys
    _sql(keys_url, "DELETE FROM deks WHERE substr(key_id, 1, 7) = 'apikey-'")
    _sql(keys_url, "DELETE FROM meta WHERE key = 'api_keys_marked'")
    with Gallery(pg_url, encoder=FakeEncoder()) as gallery:
        assert access.authenticate(gallery.context, desk.key).name == "desk-1"
        with pytest.raises(AuthenticationError):
            access.authenticate(gallery.context, old.key)
        assert gallery.verify_audit().intact
    assert _sql(keys_url, "SELECT count(*) FROM deks WHERE substr(key_id, 1, 7) = 'apikey-'") == [(1,)]


def test_rows_restored_after_an_erasure_stay_erased_on_postgresql(pg_url: str, tmp_path: Any) -> None:
    """A database restored (here: alice's rows and the erasure stamp put back by SQL) after her
    erasure: the next open drops her templates again, revokes her consent and tells the listeners."""
    alice = fake_photo(tmp_path, "a.png", (10, 0))
    with Gallery(pg_url, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [alice], Consent("R1", [PURPOSE]))
        gallery.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], Consent("R2", [PURPOSE]))
    saved = {table: _sql(pg_url, f"SELECT * FROM {table} WHERE {where}") for table, where in (
        ("subjects", "name = 'alice'"),
        ("consents", "reference = 'R1'"),
        ("consent_purposes", "consent_id = (SELECT id FROM consents WHERE reference = 'R1')"),
        ("templates", "subject_id = (SELECT id FROM subjects WHERE name = 'alice')"),
        ("meta", "key = 'keys_checked'"),
    )}
    with Gallery(pg_url, encoder=FakeEncoder()) as gallery:
        gallery.forget("alice")
    _sql(pg_url, "DELETE FROM subjects WHERE name = 'alice'")
    _sql(pg_url, "DELETE FROM meta WHERE key = 'keys_checked'")
    for table, rows in saved.items():
        for row in rows:
            _sql(pg_url, f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", tuple(row))
    store = open_store(pg_url, KeyRing(), Settings.from_env())
    commits: list[Commit] = []
    store.on_commit(commits.append)
    try:
        with store.read() as tx:
            alice_id = tx.subject_id("alice")
            assert alice_id is not None and tx.template_count(alice_id) == 0
            assert tx.active_purposes(alice_id, datetime.now(timezone.utc)) == set()
    finally:
        store.close()
    assert [c.removed_ids.tolist() for c in commits] == [[row[0] for row in saved["templates"]]]
    with Gallery(pg_url, encoder=FakeEncoder()) as gallery:
        assert gallery.match(alice, purpose=PURPOSE).faces[0].subject is None
