"""The write sequence every store shares (storage/lifecycle.py), on each engine: a bumping write moves
the generation by one and tells each listener once; a write without a bump tells none; a write
that fails leaves the rows and the generation as they were, tells none, and releases its turn."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from consentmatch import Consent, Gallery
from consentmatch.settings import Settings
from consentmatch.storage import Commit, KeyRing, Store, open_store

from .conftest import PURPOSE, FakeEncoder, fake_photo


@pytest.fixture
def store(gallery_location: str, tmp_path: Path) -> Store:
    with Gallery(gallery_location, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", [PURPOSE]))
    return open_store(gallery_location, KeyRing(), Settings.from_env())


def _state(store: Store) -> tuple[int, list[int]]:
    with store.read() as tx:
        return tx.generation(), tx.all_templates()[0].tolist()


def test_a_bumping_write_moves_the_generation_once_and_tells_each_listener_once(store: Store) -> None:
    heard: list[Commit] = []
    also: list[Commit] = []
    store.on_commit(heard.append)
    store.on_commit(also.append)
    try:
        generation, templates = _state(store)
        with store.write():
            pass
        assert _state(store) == (generation + 1, templates)
        with store.write(bump=False):
            pass
        assert _state(store) == (generation + 1, templates)
    finally:
        store.close()
    assert [(c.before, c.after, c.added_ids.tolist(), c.removed_ids.tolist()) for c in heard] == [
        (generation, generation + 1, [], [])]
    assert also == heard


def test_a_failed_write_changes_nothing_tells_nobody_and_releases_its_turn(store: Store) -> None:
    heard: list[Commit] = []
    store.on_commit(heard.append)
    try:
        before = _state(store)
        with pytest.raises(RuntimeError), store.write() as tx:
            tx.conn.execute("DELETE FROM templates")
            raise RuntimeError("the work failed")
        assert _state(store) == before and heard == []
        with store.write():  # the turn and the connection were given back
            pass
        assert _state(store) == (before[0] + 1, before[1])
        assert [(c.before, c.after) for c in heard] == [(before[0], before[0] + 1)]
    finally:
        store.close()


def test_the_queries_once_rewritten_for_postgresql_run_as_written_on_both(store: Store) -> None:
    """Inserts that keep what is there (`ON CONFLICT DO NOTHING`) and empty `IN` lists, which the
    PostgreSQL connection no longer rewrites: written once in SQL both engines speak."""
    now = datetime.now(timezone.utc)
    try:
        with store.write() as tx:
            bob = tx.ensure_subject("bob", now)
            assert tx.ensure_subject("bob", now) == bob
            assert tx.declare_purpose("research", now) and not tx.declare_purpose("research", now)
            assert tx.add_optout("subject", "carol", now) and not tx.add_optout("subject", "carol", now)
            tx.remember("desk-1", "k1", "f1", 200, "{}", now)
            tx.remember("desk-1", "k1", "f2", 201, "[]", now)  # the first answer stays
            assert tx.recalled("desk-1", "k1") == ("f1", 200, "{}")
            assert tx.subject_names([]) == {} and tx.template_owners([]) == {} and tx.templates_left([]) == 0
            assert tx.subjects_with_email([]) == [] and not tx.is_opted_out("nobody", [])
            assert tx.is_opted_out("carol", [])
            assert tx.subject_names([bob]) == {bob: "bob"}
    finally:
        store.close()
