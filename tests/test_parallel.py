"""Several photos at once (`match_many`, `import_manifest`): the results of one photo at a time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from consentmatch import Consent, ConsentMatchError, Gallery, GalleryNotFoundError, InvalidArgumentError, StorageError
from consentmatch.services import enrollment as enrollment_module
from consentmatch.images import Photo, PhotoInput
from consentmatch.manifest import read_manifest
from consentmatch.results import ImportReport
from consentmatch.storage.keyring import KeyRing

from .conftest import EXAMPLES, PURPOSE, FakeEncoder, fake_photo

HEADER = "subject,photo,consent_ref,purposes,expires,jurisdiction\n"


# -- match_many --------------------------------------------------------------------------


def test_match_many_on_real_photos_equals_match_one_at_a_time(real_gallery: Gallery, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 garbage")
    probes: list[Path] = sorted((EXAMPLES / "probes").glob("*"))
    probes.insert(3, corrupt)
    one_by_one = [real_gallery.match(p, purpose=PURPOSE) for p in probes if p != corrupt]
    before = len(real_gallery.audit())

    results = list(real_gallery.match_many(probes, purpose=PURPOSE))

    assert [r.image for r in results] == [str(p) for p in probes]
    failed = results.pop(3)
    assert failed.faces == () and failed.error is not None and "corrupt.jpg" in failed.error
    assert failed.to_dict() == {"image": str(corrupt), "faces": [], "error": failed.error,
                                "purpose": PURPOSE, "tolerance": failed.tolerance, "at": None, "image_sha256": None, "audit_event": None, "model": None}
    for got, expected in zip(results, one_by_one):
        assert got.error is None
        assert [(f.box, f.subject, [c.subject for c in f.candidates]) for f in got.faces] == \
               [(f.box, f.subject, [c.subject for c in f.candidates]) for f in expected.faces]
        assert [c.distance for f in got.faces for c in f.candidates] == \
               pytest.approx([c.distance for f in expected.faces for c in f.candidates], abs=1e-6)
    searches = real_gallery.audit()[before:]  # one audit event per photo, in input order
    assert [e.action for e in searches] == ["match"] * len(probes)
    refused = searches.pop(3)  # the unreadable photo: a refused match
    assert refused.details["outcome"] == "refused" and "corrupt.jpg" in refused.details["reason"]
    assert [e.details["faces"] for e in searches] == [len(r.faces) for r in results]


def test_match_many_keeps_input_order_on_many_photos(fake_gallery: Gallery, tmp_path: Path) -> None:
    fake_gallery.enroll("alice", fake_photo(tmp_path, "alice.png", (10, 0)), Consent("R1", ["door"]))
    photos: list[PhotoInput] = [fake_photo(tmp_path, f"p{i}.png", (10 if i % 2 else 20, i + 1)) for i in range(12)]
    photos.insert(5, tmp_path / "missing.png")
    photos.append(fake_photo(tmp_path, "alice-again.png", (10, 50)).read_bytes())
    results = list(fake_gallery.match_many(photos, purpose="door"))
    assert [r.image for r in results] == [*(str(p) for p in photos[:-1]), "<bytes>"]
    assert [r.error is not None for r in results] == [i == 5 for i in range(len(photos))]
    readable = [r for r in results if r.error is None]
    assert [r.faces[0].subject for r in readable] == [None if i % 2 == 0 else "alice" for i in range(12)] + ["alice"]


def test_match_many_checks_the_gallery_before_reading_any_photo(tmp_path: Path) -> None:
    calls = FakeEncoder.calls
    with Gallery(tmp_path / "none.db", encoder=FakeEncoder()) as gallery:
        with pytest.raises(GalleryNotFoundError):
            gallery.match_many([fake_photo(tmp_path, "a.png", (10, 0))], purpose="door")  # at the call, not when iterated
    assert FakeEncoder.calls == calls


# -- import_manifest ---------------------------------------------------------------------


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the photos the gallery decodes, in any thread."""
    names: list[str] = []
    original = enrollment_module.load_photo

    def spy(photo: PhotoInput, *, strict: bool = False) -> Photo:
        names.append(Path(str(photo)).name)
        return original(photo, strict=strict)

    monkeypatch.setattr(enrollment_module, "load_photo", spy)
    return names


def _rejections(report: ImportReport) -> list[tuple[int, str, str]]:
    return [(r.row, r.subject, r.reason) for r in report.rejected]


def test_import_refuses_the_later_of_two_rows_showing_one_face(fake_gallery: Gallery, tmp_path: Path) -> None:
    for name, person in [("a", 10), ("c", 30), ("d", 40), ("e", 50)]:
        fake_photo(tmp_path, f"{name}.png", (person, 0))
    fake_photo(tmp_path, "b.png", (10, 1))  # alice's face again, another photo
    manifest = tmp_path / "m.csv"
    manifest.write_text(HEADER + "alice,a.png,R1,door,,\nbob,b.png,R2,door,,\ncarol,c.png,R3,door,,\n"
                                 "dave,d.png,R4,door,,\nerin,e.png,R5,door,,\n")
    report = fake_gallery.import_manifest(manifest)
    assert [e.subject for e in report.enrolled] == ["alice", "carol", "dave", "erin"]
    ((row, subject, reason),) = _rejections(report)
    assert (row, subject) == (3, "bob") and "shows enrolled subject 'alice'" in reason


def test_import_never_decodes_an_opted_out_subjects_photo(fake_gallery: Gallery, tmp_path: Path,
                                                          decoded: list[str]) -> None:
    fake_gallery.add_optout(subject="mallory")
    for name, person in [("a", 10), ("b", 20), ("c", 30)]:
        fake_photo(tmp_path, f"{name}.png", (person, 0))
    (tmp_path / "mallory.jpg").write_text("not a photo: decoding it would fail with an ImageError")
    manifest = tmp_path / "m.csv"
    manifest.write_text(HEADER + "alice,a.png,R1,door,,\nmallory,mallory.jpg,R9,door,,\nbob,b.png,R2,door,,\n"
                                 "carol,c.png,R3,door,,\n")
    report = fake_gallery.import_manifest(manifest)
    ((row, subject, reason),) = _rejections(report)
    assert (row, subject) == (3, "mallory") and "do-not-enroll list" in reason
    assert sorted(decoded) == ["a.png", "b.png", "c.png"]


def test_import_waits_for_an_earlier_row_claiming_the_same_reference(fake_gallery: Gallery, tmp_path: Path,
                                                                   decoded: list[str]) -> None:
    fake_photo(tmp_path, "a.png", (10, 0))
    fake_photo(tmp_path, "c.png", (30, 0))
    (tmp_path / "b.jpg").write_text("not a photo")
    manifest = tmp_path / "m.csv"
    # R1 goes to alice at row 2, so bob's R1 is refused before his photo is read (as row by row);
    # carol's R3 is free because dave's row, which claimed it first, failed.
    manifest.write_text(HEADER + "alice,a.png,R1,door,,\nbob,b.jpg,R1,door,,\ndave,missing.png,R3,door,,\n"
                                 "carol,c.png,R3,door,,\n")
    report = fake_gallery.import_manifest(manifest)
    assert [e.subject for e in report.enrolled] == ["alice", "carol"]
    assert [(row, subject) for row, subject, _ in _rejections(report)] == [(3, "bob"), (4, "dave")]
    assert "already belongs to subject 'alice'" in report.rejected[0].reason
    assert "does not exist" in report.rejected[1].reason
    assert "b.jpg" not in decoded


def _trail(gallery: Gallery) -> list[tuple[str, str | None, object, object]]:
    """The audit trail, less times and hashes: what was recorded, of whom, in which order."""
    return [(e.action, e.subject, e.details.get("outcome"), e.details.get("consent") or e.details.get("reason"))
            for e in gallery.audit()]


@pytest.mark.parametrize("batch", [64, 3, 1])
def test_import_reports_what_enrolling_row_by_row_reports(
    tmp_path: Path, gallery_location: str, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """Rows stored `batch` to a transaction (3: refusals fall inside and across batches) leave the
    report, the gallery, the audit trail and the data keys that enrolling row by row leaves."""
    monkeypatch.setattr(enrollment_module, "COMMIT_BATCH", batch)
    monkeypatch.setattr(enrollment_module, "COMMIT_WAIT_S", 3600.0)  # batches close by size only
    for name, person, variant in [("a1", 10, 0), ("a2", 10, 1), ("b", 20, 0), ("dup", 20, 2), ("c", 30, 0),
                                  ("d", 40, 0), ("e", 50, 0)]:
        fake_photo(tmp_path, f"{name}.png", (person, variant))
    fake_photo(tmp_path, "two.png", (60, 0), (70, 0))
    (tmp_path / "text.jpg").write_text("not a photo")
    manifest = tmp_path / "m.csv"
    manifest.write_text(HEADER + "\n".join([
        "alice,a1.png,R1,door,,", "alice,a2.png,R1,door,,", "bob,b.png,R2,door,,", "frank,dup.png,R6,door,,",
        "carol,two.png,R3,door,,", "mallory,text.jpg,R7,door,,", "dave,text.jpg,R4,door,,", "erin,c.png,R1,door,,",
        "erin,e.png,R5,door,2001-01-01,", ",d.png,R8,door,,", "gina,d.png,R8,door,,", "gina,missing.png,R8,door,,",
        "hank,c.png,R9,door,,", "ivy,d.png,R10,door,,",
    ]) + "\n")
    reports, trails, keys = [], [], []
    serial = str(tmp_path / "serial.db")
    for location, row_by_row in [(gallery_location, False), (serial, True)]:
        with Gallery(location, encoder=FakeEncoder()) as gallery:
            gallery.add_optout(subject="mallory")
            if not row_by_row:
                reports.append(gallery.import_manifest(manifest))
            else:
                enrolled, rejected = [], []
                for row in read_manifest(manifest):
                    try:
                        if row.problem:
                            raise InvalidArgumentError(row.problem)
                        enrolled.append(gallery.enroll(row.subject, [row.photo], row.consent))
                    except ConsentMatchError as exc:
                        rejected.append((row.line, row.subject, str(exc)))
                reports.append((enrolled, rejected))
            trails.append(_trail(gallery))
            keys.append(len(gallery._ctx.store.keys.key_ids()))
            assert gallery.verify_audit().intact
    (batched, (enrolled, rejected)) = reports
    assert list(batched.enrolled) == enrolled
    assert _rejections(batched) == rejected
    assert [row for row, _, _ in rejected] == [5, 6, 7, 8, 9, 10, 11, 13, 15]  # every kind of refusal is exercised
    assert "shows enrolled subject 'bob'" in rejected[0][2]  # frank: bob's face, in the same batch when batch > 2
    assert trails[0] == trails[1]
    assert keys[0] == keys[1] == len({e.subject for e in enrolled})  # no key left by a batch that was undone


def _people(folder: Path, count: int) -> Path:
    """A manifest of `count` new people, person-0 to person-<count - 1>, a photo each."""
    rows = []
    for number in range(count):
        fake_photo(folder, f"p{number}.png", (10 + number * 10, 0))
        rows.append(f"person-{number},p{number}.png,R{number},door,,")
    manifest = folder / "m.csv"
    manifest.write_text(HEADER + "\n".join(rows) + "\n")
    return manifest


def test_an_imports_batch_stores_its_new_subjects_keys_in_one_key_store_write(
    store_gallery: Gallery, gallery_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key store commits once per batch of new subjects, not once each (a cluster's driver
    would wait on it), and before the batch's rows: every template opens after a reopen."""
    monkeypatch.setattr(enrollment_module, "COMMIT_WAIT_S", 3600.0)
    writes: list[int] = []
    original = KeyRing._write

    def counted(self: KeyRing) -> Any:
        writes.append(1)
        return original(self)

    monkeypatch.setattr(KeyRing, "_write", counted)
    report = store_gallery.import_manifest(_people(tmp_path, 5))
    assert len(report.enrolled) == 5 and len(writes) == 1
    assert len(store_gallery._ctx.store.keys.key_ids()) == 5
    probe = fake_photo(tmp_path, "probe.png", (30, 1))
    with Gallery(gallery_location, encoder=FakeEncoder()) as reopened:  # its keys read from the key store
        (face,) = reopened.match(probe, purpose="door").faces
    assert face.candidates[0].subject == "person-2"


def test_a_batch_whose_commit_fails_is_stored_row_by_row(
    store_gallery: Gallery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's commit that fails (here its key-store write, once) loses no row: each is then
    stored on its own and says for itself whether it went in."""
    monkeypatch.setattr(enrollment_module, "COMMIT_WAIT_S", 3600.0)
    original = KeyRing.deferred
    failures = [StorageError("the key store is full: free disk space and retry")]

    @contextmanager
    def failing_once(self: KeyRing) -> Iterator[None]:
        with original(self):
            yield
            if failures:
                raise failures.pop()

    monkeypatch.setattr(KeyRing, "deferred", failing_once)
    report = store_gallery.import_manifest(_people(tmp_path, 3))
    assert not failures and [e.subject for e in report.enrolled] == ["person-0", "person-1", "person-2"]
    assert [(e.action, e.subject) for e in store_gallery.audit()] == [
        ("consent-grant", f"person-{n}") if i == 0 else ("enroll", f"person-{n}") for n in range(3) for i in range(2)]
    assert len(store_gallery._ctx.store.keys.key_ids()) == 3


def test_an_import_stopped_by_a_bug_stores_the_rows_finished_before_it(
    store_gallery: Gallery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error that is no refusal (a bug in the photo work, an interrupt) stops the import, but
    the rows before it, already finished, are stored as row by row would have: a rerun redoes less."""
    monkeypatch.setattr(enrollment_module, "COMMIT_WAIT_S", 3600.0)
    original = enrollment_module.photo_work

    def failing_on_the_fourth(encoder: Any, job: enrollment_module.PhotoJob) -> Any:
        if any(Path(str(p)).name == "p3.png" for p in job.photos):
            raise RuntimeError("a bug in the photo work")
        return original(encoder, job)

    monkeypatch.setattr(enrollment_module, "photo_work", failing_on_the_fourth)
    with pytest.raises(RuntimeError, match="a bug"):
        store_gallery.import_manifest(_people(tmp_path, 6))
    assert [s.subject for s in store_gallery.subjects()] == ["person-0", "person-1", "person-2"]
