"""The encrypted index snapshot: used only for the very templates it was saved from, and shredded by erasure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from consentmatch import Consent, Gallery
from consentmatch.search import snapshot
from consentmatch.search.index import EXACT_BELOW, FaceIndex
from consentmatch.storage.sqlite_rows import SqliteTransaction

from .conftest import FakeEncoder, fake_encoding, fake_photo

PURPOSE = "door"


@pytest.fixture(autouse=True)
def _small_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshot even the few templates of these tests (normally only from EXACT_BELOW on)."""
    monkeypatch.setattr(snapshot, "SNAPSHOT_FROM", 1)


def _gallery(path: Path) -> Gallery:
    return Gallery(path, encoder=FakeEncoder())  # type: ignore[arg-type]


def _enrolled(tmp_path: Path, *people: int) -> Path:
    path = tmp_path / "g.db"
    with _gallery(path) as gallery:
        for person in people:
            photo = fake_photo(tmp_path, f"p{person}.png", (person, 0))
            gallery.enroll(f"person-{person}", [photo], Consent(f"R{person}", [PURPOSE]))
    return path


def _rebuilds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts index builds from the store (reading every template) from here on."""
    calls: list[int] = []
    original = SqliteTransaction.all_templates

    def counted(self: SqliteTransaction) -> tuple[np.ndarray, np.ndarray]:
        calls.append(1)
        return original(self)

    monkeypatch.setattr(SqliteTransaction, "all_templates", counted)
    return calls


def _probe(tmp_path: Path, person: int) -> Path:
    return fake_photo(tmp_path, f"probe{person}.png", (person, 3))


def test_a_reopened_gallery_reads_its_snapshot_instead_of_every_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _enrolled(tmp_path, 10, 20, 30)
    assert snapshot.path_for(path).exists()  # saved at close: enrollment had built the index
    rebuilds = _rebuilds(monkeypatch)
    with _gallery(path) as gallery:
        assert gallery.match(_probe(tmp_path, 20), purpose=PURPOSE).faces[0].subject == "person-20"
    assert rebuilds == []
    assert fake_encoding(20).astype("<f4").tobytes()[:32] not in snapshot.path_for(path).read_bytes()


def test_a_snapshot_of_other_templates_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _enrolled(tmp_path, 10, 20)
    stale = tmp_path / "stale.index"
    shutil.copyfile(snapshot.path_for(path), stale)
    with _gallery(path) as gallery:  # another enrollment: new templates, new snapshot
        gallery.enroll("person-30", [fake_photo(tmp_path, "p30.png", (30, 0))], Consent("R30", [PURPOSE]))
    shutil.copyfile(stale, snapshot.path_for(path))  # the older file put back
    rebuilds = _rebuilds(monkeypatch)
    with _gallery(path) as gallery:
        assert gallery.match(_probe(tmp_path, 30), purpose=PURPOSE).faces[0].subject == "person-30"
    assert rebuilds == [1]


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "other-gallery", "huge-size"])
def test_a_damaged_or_foreign_snapshot_is_rebuilt_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    path = _enrolled(tmp_path, 10, 20)
    target = snapshot.path_for(path)
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        del data[len(data) // 2:]
    elif damage == "garbage":
        data = bytearray(b"not an index at all")
    elif damage == "huge-size":  # a header claiming 1 PB must not be allocated before the tag is checked
        header = _header(target)
        raw = json.dumps(header, sort_keys=True).encode()
        start = len(snapshot.MAGIC) + 4
        assert bytes(data[start:start + len(raw)]) == raw
        header["bytes"] = 10**15
        bigger = json.dumps(header, sort_keys=True).encode()
        data = bytearray(snapshot.MAGIC + len(bigger).to_bytes(4, "big") + bigger) + data[start + len(raw):]
    else:
        (tmp_path / "other").mkdir()
        data = bytearray(snapshot.path_for(_enrolled(tmp_path / "other", 10, 20)).read_bytes())
    target.write_bytes(bytes(data))
    rebuilds = _rebuilds(monkeypatch)
    with _gallery(path) as gallery:
        assert gallery.match(_probe(tmp_path, 10), purpose=PURPOSE).faces[0].subject == "person-10"
    assert rebuilds == [1]


@pytest.mark.parametrize("live_index", [False, True])
def test_erasure_shreds_every_snapshot_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, live_index: bool) -> None:
    path = _enrolled(tmp_path, 10, 20)
    before = tmp_path / "before-erasure.index"
    shutil.copyfile(snapshot.path_for(path), before)  # e.g. a backup, or blocks left on disk
    with _gallery(path) as gallery:
        if live_index:
            gallery.match(_probe(tmp_path, 10), purpose=PURPOSE)
        receipt = gallery.forget("person-10")
        keys = gallery._ctx.store.keys
        # Erased from the index read back from the snapshot too (no live index needed).
        assert receipt.verified and receipt.index_entries_removed == 1 and keys.index_key_ids() == set()
        with gallery._ctx.store.read() as tx:
            state = tx.templates_state()
        old_state = _header_state(before)
        # The old snapshot holds person-10: with its key gone it opens for no state at all.
        assert snapshot.load(before, keys, old_state, 0) is None
        assert not snapshot.path_for(path).exists() or _header_state(snapshot.path_for(path)) == state
    # At close the index is saved again, without the erased template, under a new key.
    assert _header_key(snapshot.path_for(path)) != _header_key(before)
    rebuilds = _rebuilds(monkeypatch)
    with _gallery(path) as gallery:
        result = gallery.match(_probe(tmp_path, 10), purpose=PURPOSE)
        assert result.faces[0].subject is None
        assert all(c.subject != "person-10" for c in result.faces[0].candidates)
        index = gallery._ctx.cache.live
        assert index is not None and len(index) == 1
    assert rebuilds == []


def test_each_save_shreds_the_previous_snapshot_key(tmp_path: Path) -> None:
    path = _enrolled(tmp_path, 10, 20)
    first = _header_key(snapshot.path_for(path))
    with _gallery(path) as gallery:
        gallery.enroll("person-30", [fake_photo(tmp_path, "p30.png", (30, 0))], Consent("R30", [PURPOSE]))
    with _gallery(path) as gallery:
        gallery.subjects()  # opens the keys
        assert gallery._ctx.store.keys.index_key_ids() == {_header_key(snapshot.path_for(path))} != {first}
        assert gallery.key_info().data_keys == 3  # subjects' keys only


def test_a_save_killed_midway_leaves_nothing_for_long(tmp_path: Path) -> None:
    path = _enrolled(tmp_path, 10, 20)
    left = tmp_path / f".{snapshot.path_for(path).name}.k1ll3d"  # what mkstemp named it
    left.write_bytes(b"half a snapshot")
    with _gallery(path) as gallery:
        gallery.enroll("person-30", [fake_photo(tmp_path, "p30.png", (30, 0))], Consent("R30", [PURPOSE]))
    assert not left.exists() and snapshot.path_for(path).exists()


def test_an_unwritable_folder_costs_the_snapshot_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _enrolled(tmp_path, 10, 20)
    snapshot.discard(snapshot.path_for(path))

    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshot, "save", refused)
    with _gallery(path) as gallery:
        assert gallery.match(_probe(tmp_path, 10), purpose=PURPOSE).faces[0].subject == "person-10"
    assert not snapshot.path_for(path).exists()


def test_ivf_index_survives_bytes_round_trip_and_still_removes_in_place() -> None:
    rng = np.random.default_rng(5)
    vectors = (rng.normal(size=(EXACT_BELOW + 500, 128)) * 0.1).astype(np.float32)
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    index = FaceIndex.build(ids, vectors, generation=4)
    assert index.params.kind == "ivf"
    back = FaceIndex.from_bytes(index.to_bytes(), index.params, generation=4)
    assert back.params == index.params and len(back) == len(index)
    for a, b in zip(index.search(vectors[:20], 3), back.search(vectors[:20], 3)):
        np.testing.assert_array_equal(a, b)
    assert back.remove(ids[:3]) == 3 and not back.contains(1) and back.contains(4)
    assert not np.isin(back.search(vectors[:3], 5)[1], ids[:3]).any()


def _header(path: Path) -> dict[str, object]:
    with path.open("rb") as source:
        return snapshot._header(source)[1]


def _header_state(path: Path) -> str:
    return str(_header(path)["templates_state"])


def _header_key(path: Path) -> str:
    return str(_header(path)["key_id"])
