"""The import manifest: whole-file problems raise, row problems are reported per row."""

from __future__ import annotations

from pathlib import Path

import pytest

from consentmatch import Gallery, ManifestError
from consentmatch.manifest import read_manifest

from .conftest import fake_photo

HEADER = "subject,photo,consent_ref,purposes,expires,jurisdiction\n"


def test_missing_columns(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject,photo\nalice,a.png\n")
    with pytest.raises(ManifestError, match="lacks the column.*consent_ref, purposes"):
        read_manifest(manifest)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")


def test_rows_with_problems(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "\ufeff" + HEADER
        + "alice,a.png,R1,door;lobby,2030-01-01,us-il\n"
        + ",a.png,R2,door,,\n"
        + "bob,,R3,door,,\n"
        + "carol,c.png,,door,,\n"
        + "dave,d.png,R4,door,someday,\n"
        + "erin,e.png,R5,,,\n"
        + "frank,/abs/f.png,R6,door,,Illinois\n"
    )
    rows = read_manifest(manifest)
    assert [r.line for r in rows] == [2, 3, 4, 5, 6, 7, 8]
    alice = rows[0]
    assert alice.problem is None and alice.photo == str(tmp_path / "a.png")
    assert alice.consent is not None and alice.consent.purposes == ("door", "lobby")
    assert alice.consent.jurisdiction == "US-IL" and f"{alice.consent.expires_at:%Y-%m-%d}" == "2030-01-01"
    problems = [r.problem or "" for r in rows[1:]]
    for problem, expected in zip(
        problems, ["empty subject", "empty photo", "no consent_ref", "not a date", "names no purpose", "not an ISO 3166"]
    ):
        assert expected in problem


def test_import_enrolls_good_rows_and_reports_bad(tmp_path: Path) -> None:
    from .conftest import FakeEncoder

    fake_photo(tmp_path, "a.png", (10, 0))
    fake_photo(tmp_path, "a2.png", (10, 1))
    fake_photo(tmp_path, "two.png", (20, 0), (30, 0))
    manifest = tmp_path / "m.csv"
    manifest.write_text(HEADER + "alice,a.png,R1,door,,\nalice,a2.png,R1,door,,\nbob,two.png,R2,door,,\ncarol,c.png,,door,,\n")
    seen: list[tuple[int, int]] = []
    with Gallery(tmp_path / "g.db", encoder=FakeEncoder()) as gallery:
        report = gallery.import_manifest(manifest, progress=lambda done, total: seen.append((done, total)))
        assert [s.subject for s in gallery.subjects()] == ["alice"]
        assert gallery.subjects()[0].templates == 2
    assert (report.rows, len(report.enrolled), report.subjects) == (4, 2, ("alice",))
    assert [(r.row, r.subject) for r in report.rejected] == [(4, "bob"), (5, "carol")]
    assert "2 faces found" in report.rejected[0].reason
    assert seen[-1] == (4, 4)
