"""The Gallery's rules, fast, with the fake encoder: consent, all-or-nothing, purpose, erasure."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from consentmatch import (
    Consent,
    ConsentError,
    Gallery,
    GalleryNotFoundError,
    ImageError,
    InvalidArgumentError,
    MultipleFacesError,
    NoFaceError,
    PolicyError,
    StorageError,
    SubjectNotFoundError,
)

from .conftest import PURPOSE, FakeEncoder, fake_encoding, fake_photo, gallery_rows


def test_enroll_then_match_and_verify(store_gallery: Gallery, tmp_path: Path, consent: Consent) -> None:
    enrolled = store_gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], consent)
    assert (enrolled.subject, enrolled.templates_added, enrolled.templates_total) == ("alice", 1, 1)
    result = store_gallery.match(fake_photo(tmp_path, "probe.png", (10, 3)), purpose=PURPOSE)
    (face,) = result.faces
    assert face.subject == "alice" and 0.1 < face.distance < 0.6  # type: ignore[operator]
    assert store_gallery.verify("alice", tmp_path / "probe.png", purpose=PURPOSE).match


def test_enroll_refuses_without_consent(fake_gallery: Gallery, tmp_path: Path) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    with pytest.raises(ConsentError, match="needs a recorded consent"):
        fake_gallery.enroll("alice", [photo], None)
    assert not fake_gallery.path.exists()


def test_enroll_refuses_expired_consent(store_gallery: Gallery, tmp_path: Path) -> None:
    expired = Consent("REF-1", [PURPOSE], expires_at=datetime(2020, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(ConsentError, match="expired on 2020-01-01"):
        store_gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], expired)


def test_consent_reference_belongs_to_one_subject(store_gallery: Gallery, tmp_path: Path, consent: Consent) -> None:
    store_gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], consent)
    before = FakeEncoder.calls
    with pytest.raises(ConsentError, match="already belongs to subject 'alice'"):
        store_gallery.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], consent)
    assert FakeEncoder.calls == before  # refused before any face was processed


def test_several_photos_enroll_all_or_nothing(fake_gallery: Gallery, tmp_path: Path, consent: Consent) -> None:
    fake_gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], consent)
    fake_gallery.close()
    tables = gallery_rows(fake_gallery.path)
    good = fake_photo(tmp_path, "a2.png", (10, 1))
    for bad, error in [
        (fake_photo(tmp_path, "two.png", (10, 2), (20, 0)), MultipleFacesError),
        (fake_photo(tmp_path, "none.png"), NoFaceError),
        (tmp_path / "missing.jpg", ImageError),
    ]:
        with pytest.raises(error, match=bad.name):
            fake_gallery.enroll("alice", [good, bad], consent)
    fake_gallery.close()
    assert gallery_rows(fake_gallery.path) == tables  # nothing enrolled; each refusal is in the audit trail
    assert fake_gallery.subjects()[0].templates == 1
    refused = [e.details["error"] for e in fake_gallery.audit() if e.details.get("outcome") == "refused"]
    assert refused == ["MultipleFacesError", "NoFaceError", "ImageError"]


def test_match_searches_only_the_purpose(store_gallery: Gallery, tmp_path: Path) -> None:
    store_gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", ["door"]))
    store_gallery.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], Consent("R2", ["payroll"]))
    probe = fake_photo(tmp_path, "probe.png", (10, 1), (20, 1))
    door = store_gallery.match(probe, purpose="door")
    assert [f.subject for f in door.faces] == ["alice", None]
    assert {c.subject for f in door.faces for c in f.candidates} == {"alice"}
    assert [f.subject for f in store_gallery.match(probe, purpose="payroll").faces] == [None, "bob"]
    store_gallery.declare_purpose("marketing")  # declared, but no consent covers it: an answer
    assert all(not f.candidates for f in store_gallery.match(probe, purpose="marketing").faces)
    with pytest.raises(InvalidArgumentError, match="did you mean 'payroll'"):  # undeclared: a usage error
        store_gallery.match(probe, purpose="payrol")


def test_purpose_filter_is_exact_not_a_post_filter(store_gallery: Gallery, tmp_path: Path) -> None:
    # Twenty other-purpose subjects nearer to the probe than the true match must not hide it.
    target = fake_photo(tmp_path, "t.png", (50, 0))
    store_gallery.enroll("target", [target], Consent("T", ["door"]))
    for i in range(20):
        store_gallery.enroll(f"twin{i}", [fake_photo(tmp_path, f"w{i}.png", (50, 0))], Consent(f"W{i}", ["other"]),
                            allow_duplicate=True)
    (face,) = store_gallery.match(target, purpose="door", top_k=1).faces
    assert face.subject == "target"


def test_top_k_lists_each_subject_once_at_its_nearest_template(store_gallery: Gallery, tmp_path: Path) -> None:
    photos = [fake_photo(tmp_path, f"a{v}.png", (10, v)) for v in range(1, 6)]
    store_gallery.enroll("alice", photos, Consent("R1", [PURPOSE]))
    store_gallery.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], Consent("R2", [PURPOSE]))
    (face,) = store_gallery.match(fake_photo(tmp_path, "p.png", (10, 3)), purpose=PURPOSE, top_k=2).faces
    assert [c.subject for c in face.candidates] == ["alice", "bob"]
    assert face.candidates[0].distance == pytest.approx(0.0, abs=1e-3)  # variant 3 is enrolled
    assert face.candidates[1].distance > 1.0  # listed beyond the tolerance


def test_forget_erases_for_good(store_gallery: Gallery, tmp_path: Path, consent: Consent) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    store_gallery.enroll("alice", [photo, fake_photo(tmp_path, "a2.png", (10, 1))], consent)
    store_gallery.match(photo, purpose=PURPOSE)  # index built
    receipt = store_gallery.forget("alice")
    assert (receipt.templates_removed, receipt.index_entries_removed, receipt.consents_removed) == (2, 2, 1)
    assert store_gallery.match(photo, purpose=PURPOSE).faces[0].candidates == ()
    assert store_gallery.subjects() == []
    assert not store_gallery.verify("alice", photo, purpose=PURPOSE).match  # forgotten: a non-match (issue 24)
    with pytest.raises(SubjectNotFoundError):
        store_gallery.forget("alice")
    with Gallery(store_gallery.location, encoder=FakeEncoder()) as reopened:  # a fresh index from the store
        assert reopened.match(photo, purpose=PURPOSE).faces[0].candidates == ()


def test_other_gallery_instances_see_writes(gallery_location: str, tmp_path: Path, consent: Consent) -> None:
    path = gallery_location
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    with Gallery(path, encoder=FakeEncoder()) as writer, Gallery(path, encoder=FakeEncoder()) as reader:
        writer.enroll("alice", [photo], consent)
        assert reader.match(photo, purpose=PURPOSE).faces[0].subject == "alice"
        writer.forget("alice")
        assert reader.match(photo, purpose=PURPOSE).faces[0].candidates == ()  # stale index rebuilt


class _TogetherEncoder(FakeEncoder):
    """The fake encoder, but each photo's work waits for the other writer's: both enrollments
    reach their commit at the same moment, as two nodes' would."""

    def __init__(self, barrier: threading.Barrier) -> None:
        self.barrier = barrier

    def encode(self, photo, min_face_px):  # type: ignore[no-untyped-def]
        faces = super().encode(photo, min_face_px)
        self.barrier.wait(timeout=30)
        return faces


def test_one_face_enrolled_under_two_names_at_once_is_refused_once(gallery_location: str, tmp_path: Path) -> None:
    """The duplicate rule holds between writers (processes, PostgreSQL nodes): it is checked
    inside the write transaction, so the second of two simultaneous enrollments sees the first."""
    barrier = threading.Barrier(2)
    photos = [fake_photo(tmp_path, "a.png", (10, 0)), fake_photo(tmp_path, "b.png", (10, 1))]
    outcomes: list[object] = []

    def enroll(name: str, photo: Path) -> None:
        with Gallery(gallery_location, encoder=_TogetherEncoder(barrier)) as gallery:
            try:
                outcomes.append(gallery.enroll(name, [photo], Consent(f"REF-{name}", [PURPOSE])))
            except PolicyError as exc:
                outcomes.append(exc)

    Gallery(gallery_location, encoder=FakeEncoder()).grant_consent("setup", Consent("REF-setup", [PURPOSE]))
    threads = [threading.Thread(target=enroll, args=(n, p)) for n, p in zip(("alice", "alias"), photos)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = [o for o in outcomes if isinstance(o, PolicyError)]
    assert len(outcomes) == 2 and len(refused) == 1, outcomes
    assert "one person may not be enrolled under two names" in str(refused[0])
    with Gallery(gallery_location, encoder=FakeEncoder()) as gallery:
        assert sum(s.templates for s in gallery.subjects()) == 1


def test_consent_expiry_stops_matching(gallery_location: str, tmp_path: Path) -> None:
    now = [datetime(2026, 1, 1, tzinfo=timezone.utc)]
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    with Gallery(gallery_location, encoder=FakeEncoder(), clock=lambda: now[0]) as gallery:
        gallery.enroll("alice", [photo], Consent("R", [PURPOSE], expires_at=datetime(2026, 6, 1)))
        assert gallery.match(photo, purpose=PURPOSE).faces[0].subject == "alice"
        now[0] += timedelta(days=200)
        assert gallery.match(photo, purpose=PURPOSE).faces[0].candidates == ()
        assert gallery.subjects()[0].active_purposes == ()
        assert not gallery.verify("alice", photo, purpose=PURPOSE).match  # expired: a non-match (issue 24)
        assert gallery.audit(action="verify")[-1].details["error"] == "NoActiveEnrollmentError"


def test_reads_of_a_missing_gallery(tmp_path: Path) -> None:
    gallery = Gallery(tmp_path / "nope.db", encoder=FakeEncoder())
    with pytest.raises(GalleryNotFoundError, match="No gallery at"):
        gallery.match(fake_photo(tmp_path, "a.png", (10, 0)), purpose=PURPOSE)
    with pytest.raises(GalleryNotFoundError):
        gallery.forget("alice")
    assert gallery.subjects() == []
    assert not (tmp_path / "nope.db").exists()


def test_a_file_that_is_not_a_gallery(tmp_path: Path, consent: Consent) -> None:
    junk = tmp_path / "notes.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StorageError, match="not a readable consentmatch gallery"):
        Gallery(junk, encoder=FakeEncoder()).enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], consent)
    assert junk.read_bytes() == b"this is not sqlite at all" * 100


def test_concurrent_searches_while_enrolling_and_forgetting(store_gallery: Gallery, tmp_path: Path) -> None:
    probe = fake_photo(tmp_path, "probe.png", (10, 1))
    store_gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("RA", [PURPOSE]))
    photos = [fake_photo(tmp_path, f"p{i}.png", (100 + i, 0)) for i in range(10)]
    errors: list[BaseException] = []

    def search() -> None:
        try:
            for _ in range(30):
                (face,) = store_gallery.match(probe, purpose=PURPOSE).faces
                assert face.subject == "alice"
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=search) for _ in range(4)]
    for thread in threads:
        thread.start()
    for i, photo in enumerate(photos):
        store_gallery.enroll(f"s{i}", [photo], Consent(f"R{i}", [PURPOSE]))
        if i % 2:
            store_gallery.forget(f"s{i - 1}")
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(s.subject for s in store_gallery.subjects()) == ["alice", "s1", "s3", "s5", "s7", "s9"]


def test_forget_racing_a_reenrollment_of_the_name_shreds_the_new_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consentmatch.storage.sqlite import SqliteStore as Store

    path, keys = tmp_path / "g.db", tmp_path / "keys"
    first_photo, second_photo = fake_photo(tmp_path, "a.png", (10, 0)), fake_photo(tmp_path, "a2.png", (10, 1))
    with Gallery(path, encoder=FakeEncoder(), key_dir=keys) as first, Gallery(path, encoder=FakeEncoder(), key_dir=keys) as second:
        first.enroll("alice", [first_photo], Consent("R1", [PURPOSE]))
        real_write = Store.write
        raced: list[bool] = []

        def write(store: Store, **options: bool):  # type: ignore[no-untyped-def]
            if store is first._ctx.store and not raced:  # just before the erasure's write: another process...
                raced.append(True)
                second.forget("alice")  # ...forgets alice and enrolls her again, under a new data key
                second.enroll("alice", [second_photo], Consent("R2", [PURPOSE]))
            return real_write(store, **options)

        monkeypatch.setattr(Store, "write", write)
        receipt = first.forget("alice")
        monkeypatch.undo()
        assert raced and receipt.verified and receipt.templates_removed == 1
        assert second.subjects() == []
    deks = sqlite3.connect(next(keys.glob("*.deks")))
    try:  # every data key of alice is gone: no backup from before decrypts either enrollment
        assert deks.execute("SELECT key_id FROM deks WHERE key_id NOT LIKE 'index-%' AND key_id NOT LIKE 'mac-%'").fetchall() == []
    finally:
        deks.close()


def test_top_k_is_capped_by_the_policy_and_far_distances_are_coarse(store_gallery: Gallery, tmp_path: Path) -> None:
    for person in range(1, 13):
        store_gallery.enroll(f"p{person}", [fake_photo(tmp_path, f"p{person}.png", (person * 10, 0))],
                            Consent(f"R{person}", [PURPOSE]))
    probe = fake_photo(tmp_path, "probe.png", (10, 3))
    assert store_gallery.policy()["max_top_k"] == 10
    with pytest.raises(InvalidArgumentError, match=r"top_k 11 is over this gallery's limit of 10 \(policy max_top_k\)"):
        store_gallery.match(probe, purpose=PURPOSE, top_k=11)
    with pytest.raises(InvalidArgumentError, match="max_top_k"):
        list(store_gallery.match_many([probe], purpose=PURPOSE, top_k=11))
    (face,) = store_gallery.match(probe, purpose=PURPOSE, top_k=10).faces
    assert len(face.candidates) == 10
    nearest, *far = face.candidates
    exact = float(np.linalg.norm(fake_encoding(10, 0) - fake_encoding(10, 3)))
    assert nearest.subject == "p1" and nearest.distance == pytest.approx(exact, abs=1e-6) and face.distance == nearest.distance
    assert nearest.distance != round(nearest.distance, 2)  # within the tolerance: exact
    assert all(c.distance > 0.6 and c.distance == round(c.distance, 2) for c in far)  # beyond it: 2 decimals
    store_gallery.set_policy("max_top_k", "12")
    assert len(store_gallery.match(probe, purpose=PURPOSE, top_k=12).faces[0].candidates) == 12
    with pytest.raises(InvalidArgumentError, match="whole number from 1 to 1000"):
        store_gallery.set_policy("max_top_k", "0.5")
