"""The gallery's decision gates: the quality bar at enrollment and for verify probes, the
duplicate guard, the ambiguity margin, and calibrate storing its tolerance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from consentmatch import Consent, Gallery, PolicyError, QualityError
from consentmatch.cli import app

from .conftest import DATA, EXAMPLES, FakeEncoder, fake_photo

OBAMA = EXAMPLES / "people" / "obama" / "obama.jpg"


def test_quality_bar_refuses_a_blurred_enrollment_photo_with_its_reason(tmp_path: Path) -> None:
    image = Image.open(OBAMA).convert("RGB")
    image.filter(ImageFilter.GaussianBlur(8)).save(tmp_path / "blurred.jpg")
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.set_policy("quality", "medium")
        with pytest.raises(QualityError, match="blurred.jpg' is below the medium quality bar") as caught:
            gallery.enroll("obama", [OBAMA, tmp_path / "blurred.jpg"], Consent("R1", ["door"]))
        assert caught.value.reasons == ("LOW_SHARPNESS",)
        assert gallery.subjects() == []  # all or nothing
        gallery.enroll("obama", [tmp_path / "blurred.jpg"], Consent("R1", ["door"]), quality="off")
        assert gallery.subjects()[0].templates == 1


def test_quality_bar_for_verify_probes(tmp_path: Path) -> None:
    dark = Image.open(EXAMPLES / "probes" / "obama1.jpg").convert("RGB").point(lambda v: v // 8)
    dark.save(tmp_path / "dark.jpg")
    with Gallery(tmp_path / "g.db") as gallery:
        gallery.enroll("obama", [OBAMA], Consent("R1", ["door"]), quality="medium")
        gallery.set_policy("quality", "medium")
        assert gallery.verify("obama", EXAMPLES / "probes" / "obama1.jpg", purpose="door").match
        with pytest.raises(QualityError) as caught:
            gallery.verify("obama", tmp_path / "dark.jpg", purpose="door")
        assert "LOW_BRIGHTNESS" in caught.value.reasons


def test_cut_faces_are_refused_as_templates_at_medium(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db") as gallery, pytest.raises(QualityError) as caught:
        gallery.enroll("obama", [DATA / "edge" / "obama_partial_face.jpg"], Consent("R1", ["door"]), quality="medium")
    assert caught.value.reasons == ("CUT_BY_BORDER",)


def test_duplicate_guard(fake_gallery: Gallery, tmp_path: Path) -> None:
    fake_gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", ["door"]))
    again = fake_photo(tmp_path, "again.png", (10, 4))
    with pytest.raises(PolicyError, match="again.png' shows enrolled subject 'alice'"):
        fake_gallery.enroll("alicia", [again], Consent("R2", ["door"]))
    fake_gallery.enroll("alice", [again], "R1")  # more photos of the same subject are fine
    fake_gallery.enroll("alicia", [again], Consent("R2", ["door"]), allow_duplicate=True)  # twins
    fake_gallery.set_policy("duplicate_tolerance", "0.1")
    fake_gallery.enroll("alina", [fake_photo(tmp_path, "v.png", (10, 9))], Consent("R3", ["door"]))


def test_ambiguity_margin(fake_gallery: Gallery, tmp_path: Path) -> None:
    fake_gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 1))], Consent("R1", ["door"]))
    fake_gallery.enroll("twin", [fake_photo(tmp_path, "t.png", (10, 2))], Consent("R2", ["door"]), allow_duplicate=True)
    probe = fake_photo(tmp_path, "p.png", (10, 1))
    (face,) = fake_gallery.match(probe, purpose="door").faces
    assert face.subject == "alice" and not face.ambiguous
    gap = face.candidates[1].distance - face.candidates[0].distance
    fake_gallery.set_policy("ambiguity_margin", str(round(gap + 0.05, 3)))
    (face,) = fake_gallery.match(probe, purpose="door").faces
    assert face.ambiguous and face.subject is None and face.distance is None
    assert [c.subject for c in face.candidates] == ["alice", "twin"]
    assert face.to_dict()["ambiguous"] is True


def test_cli_gates_and_calibrate_stores_the_tolerance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("consentmatch.vision.default_encoder", lambda settings=None: FakeEncoder())
    runner = CliRunner()
    env = {"CONSENTMATCH_GALLERY": str(tmp_path / "g.db")}
    a, b = fake_photo(tmp_path, "a.png", (10, 0)), fake_photo(tmp_path, "b.png", (10, 3))
    assert runner.invoke(app, ["enroll", "alice", str(a), "-c", "R1", "-p", "door"], env=env).exit_code == 0
    refused = runner.invoke(app, ["enroll", "bob", str(b), "-c", "R2", "-p", "door"], env=env)
    assert refused.exit_code == 1 and "shows enrolled subject 'alice'" in refused.stderr
    ok = runner.invoke(app, ["enroll", "bob", str(b), "-c", "R2", "-p", "door", "--allow-duplicate"], env=env)
    assert ok.exit_code == 0
    strict = runner.invoke(app, ["enroll", "carol", str(fake_photo(tmp_path, "c.png", (30, 0))), "-c", "R3", "-p", "door",
                                 "--quality", "medium"], env=env)
    assert strict.exit_code == 1 and "LOW_SHARPNESS" in strict.stderr  # flat squares are not faces
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("file_x,file_y,same\na.png,b.png,yes\na.png,c.png,no\nb.png,c.png,no\n")
    result = runner.invoke(app, ["calibrate", str(pairs), "--target-fmr", "0.5", "--json"], env=env)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["stored"] is True
    with Gallery(tmp_path / "g.db", encoder=FakeEncoder()) as gallery:
        assert gallery.policy()["tolerance"] == pytest.approx(body["tolerance"])
        assert gallery.audit()[-1].action == "policy-set"
    dry = runner.invoke(app, ["calibrate", str(pairs), "--target-fmr", "0.5", "--dry-run", "--json"], env=env)
    assert json.loads(dry.stdout)["stored"] is False
    typo = runner.invoke(app, ["calibrate", str(pairs), "--target-fmr", "0.5", "-g", str(tmp_path / "typo.db")])
    assert typo.exit_code == 1 and typo.stderr.startswith("error: No gallery at") and typo.stderr.count("\n") == 1
    assert not (tmp_path / "typo.db").exists()  # refused, never created (it is not a verb that creates)
