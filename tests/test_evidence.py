"""Issue 14's evidence: idempotent enrollment, a complete audit, results tied to their record, the key notice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from consentmatch import Consent, Gallery
from consentmatch.cli import app

from .conftest import PURPOSE, FakeEncoder, fake_photo

runner = CliRunner()


def run(*args: str | Path) -> Any:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("consentmatch.vision.default_encoder", lambda settings=None: FakeEncoder())


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    fake_photo(tmp_path, "ann1.png", (10, 0))
    fake_photo(tmp_path, "ann2.png", (10, 3))
    fake_photo(tmp_path, "bob.png", (20, 0))
    path = tmp_path / "manifest.csv"
    path.write_text(
        "subject,photo,consent_ref,purposes\n"
        f"ann,ann1.png,R-1,{PURPOSE}\nann,ann2.png,R-1,{PURPOSE}\nbob,bob.png,R-2,{PURPOSE}\n"
    )
    return path


# -- idempotent import and enroll ------------------------------------------------------------


def test_import_twice_stores_nothing_new(store_gallery: Gallery, manifest: Path) -> None:
    first = store_gallery.import_manifest(manifest)
    counts = {s.subject: s.templates for s in store_gallery.subjects()}
    second = store_gallery.import_manifest(manifest)
    assert first.to_dict()["already_enrolled"] == 0
    assert second.to_dict()["already_enrolled"] == 3 and not second.rejected
    assert {s.subject: s.templates for s in store_gallery.subjects()} == counts == {"ann": 2, "bob": 1}


def test_enroll_same_photo_again_is_already_enrolled(store_gallery: Gallery, tmp_path: Path, consent: Consent) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    store_gallery.enroll("ann", [photo], consent)
    again = store_gallery.enroll("ann", [photo, fake_photo(tmp_path, "b.png", (10, 4))], consent)
    assert (again.templates_added, again.already_enrolled, again.templates_total) == (1, 1, 2)
    assert again.to_dict()["already_enrolled"] == 1


def test_cli_import_twice_says_already_enrolled(fake_cli: None, manifest: Path, tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    assert run("import", manifest, "-g", db).exit_code == 0
    result = run("import", manifest, "-g", db)
    assert result.exit_code == 0 and "3 row(s) already enrolled" in result.stdout
    report = json.loads(run("import", manifest, "-g", db, "--json").stdout)
    assert report["already_enrolled"] == 3 and report["enrolled"] == 3


# -- a complete audit ------------------------------------------------------------------------


@pytest.fixture
def two_people(store_gallery: Gallery, tmp_path: Path) -> Gallery:
    """Two subjects, on each store in turn: the audit's filters are each engine's own JSON lookups."""
    store_gallery.enroll("ann", [fake_photo(tmp_path, "ann.png", (10, 0))], Consent("R-1", [PURPOSE]))
    store_gallery.enroll("bob", [fake_photo(tmp_path, "bob.png", (20, 0))], Consent("R-2", [PURPOSE]))
    return store_gallery


def test_match_records_every_subject_shown(two_people: Gallery, tmp_path: Path) -> None:
    stranger = fake_photo(tmp_path, "stranger.png", (30, 0))
    result = two_people.match(stranger, purpose=PURPOSE)
    assert [f.subject for f in result.faces] == [None] and len(result.faces[0].candidates) == 2
    (event,) = two_people.audit(action="match")
    assert event.details["subjects"] == []
    assert sorted(s["subject"] for s in event.details["shown"]) == ["ann", "bob"]
    assert all(s["distance"] == round(s["distance"], 2) > 0.6 for s in event.details["shown"])
    # candidates beyond the tolerance are found by subject, and in the subject access export
    assert [e.seq for e in two_people.audit("ann", action="match")] == [event.seq]
    assert event.seq in [e["seq"] for e in two_people.export("bob")["audit"]]
    assert two_people.verify_audit().intact


def test_failed_verify_is_recorded_under_the_subject_with_its_distance(two_people: Gallery, tmp_path: Path) -> None:
    result = two_people.verify("ann", fake_photo(tmp_path, "bob2.png", (20, 2)), purpose=PURPOSE)
    assert not result.match and result.distance is None  # issue 24: the caller gets no near-miss measure
    (event,) = two_people.audit("ann", action="verify")
    (shown,) = event.details["shown"]  # the auditor does
    assert shown["subject"] == "ann" and shown["distance"] == round(shown["distance"], 2) > 0.6


def test_audit_filters(two_people: Gallery, tmp_path: Path) -> None:
    two_people.match(fake_photo(tmp_path, "p.png", (10, 1)), purpose=PURPOSE, actor="desk-1")
    everything = two_people.audit()
    assert [e.action for e in two_people.audit(actor="desk-1")] == ["match"]
    assert {e.action for e in two_people.audit(action="enroll")} == {"enroll"}
    assert [e.action for e in two_people.audit(purpose=PURPOSE)] == ["match"]
    last = everything[-1].at
    assert two_people.audit(since=last) == [everything[-1]]
    early = two_people.audit(until=everything[0].at)
    assert early[0] == everything[0] and all(e.at == everything[0].at for e in early)
    assert two_people.audit("ann", action="match", until=last.replace(year=2000)) == []


def test_cli_audit_filters(fake_cli: None, tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    assert run("enroll", "ann", photo, "-g", db, "-c", "R1", "-p", PURPOSE).exit_code == 0
    assert run("match", photo, "-g", db, "-p", PURPOSE, "--actor", "desk-1").exit_code == 0
    lines = [json.loads(x) for x in run("audit", "-g", db, "--actor", "desk-1", "--since", "2000-01-01",
                                       "--until", "2999-12-31", "--json").stdout.splitlines()]
    assert [e["action"] for e in lines] == ["match"] and {"seq", "hash"} <= set(lines[0])
    assert run("audit", "-g", db, "--action", "match", "--until", "2000-01-01", "--json").stdout == ""
    assert "ann" in run("audit", "-g", db, "--subject", "ann", "--purpose", PURPOSE).stdout
    bad = run("audit", "-g", db, "--since", "yesterday")
    assert bad.exit_code == 2 and "--since 'yesterday' is not a date" in bad.output and "Traceback" not in bad.output


# -- evidence-grade results ------------------------------------------------------------------


def test_match_and_verify_cite_their_record(two_people: Gallery, tmp_path: Path) -> None:
    import hashlib

    import consentmatch

    probe = fake_photo(tmp_path, "p.png", (10, 1))
    sha = hashlib.sha256(probe.read_bytes()).hexdigest()
    body = two_people.match(probe, purpose=PURPOSE).to_dict()
    event = two_people.audit()[-1]
    assert (body["audit_event"], body["image_sha256"], body["at"]) == (event.seq, sha, event.at.isoformat())
    assert body["model"] == {"encoder": "FakeEncoder", "version": consentmatch.__version__}
    assert body["faces"][0]["subject"] == "ann"  # the existing fields are unchanged
    verified = two_people.verify("ann", probe, purpose=PURPOSE).to_dict()
    event = two_people.audit()[-1]
    assert (verified["audit_event"], verified["image_sha256"], verified["at"]) == (event.seq, sha, event.at.isoformat())
    assert verified["match"] is True and verified["model"]["encoder"] == "FakeEncoder"


def test_match_json_carries_the_evidence(fake_cli: None, tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    assert run("enroll", "ann", photo, "-g", db, "-c", "R1", "-p", PURPOSE).exit_code == 0
    (body,) = [json.loads(x) for x in run("match", photo, "-g", db, "-p", PURPOSE, "--json").stdout.splitlines()]
    assert {"image", "faces", "error", "at", "image_sha256", "audit_event", "model"} <= set(body)
    assert isinstance(body["audit_event"], int) and body["at"].endswith("+00:00")
    verified = json.loads(run("verify", "ann", photo, "-g", db, "-p", PURPOSE, "--json").stdout)
    assert verified["audit_event"] == body["audit_event"] + 1 and verified["image_sha256"] == body["image_sha256"]


# -- match --annotate ------------------------------------------------------------------------


def test_match_annotate_writes_reviewable_copies(fake_cli: None, tmp_path: Path) -> None:
    from PIL import Image

    db, out = tmp_path / "g.db", tmp_path / "review"
    assert run("enroll", "ann", fake_photo(tmp_path, "ann.png", (10, 0)), "-g", db, "-c", "R1", "-p", PURPOSE).exit_code == 0
    group = fake_photo(tmp_path, "group.png", (10, 2), (30, 0))  # ann and a stranger
    jpeg = tmp_path / "door.jpg"
    Image.open(group).save(jpeg, quality=100)
    result = run("match", group, jpeg, "-g", db, "-p", PURPOSE, "--annotate", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["door.jpg", "group.png"]
    copy = Image.open(out / "group.png").convert("RGB")
    assert Image.open(out / "door.jpg").format == "JPEG" and copy.size == Image.open(group).size
    assert copy.getpixel((10, 60)) == (255, 215, 0) and copy.getpixel((120, 60)) == (255, 215, 0)  # both boxes


def test_annotate_labels_only_what_the_result_names(monkeypatch: pytest.MonkeyPatch, fake_cli: None, tmp_path: Path) -> None:
    drawn: list[Any] = []
    monkeypatch.setattr("consentmatch.images.annotate", lambda photo, labels, target: drawn.append(labels))
    db = tmp_path / "g.db"
    assert run("enroll", "ann", fake_photo(tmp_path, "ann.png", (10, 0)), "-g", db, "-c", "R1", "-p", PURPOSE).exit_code == 0
    assert run("enroll", "bob", fake_photo(tmp_path, "bob.png", (20, 0)), "-g", db, "-c", "R2", "-p", PURPOSE).exit_code == 0
    group = fake_photo(tmp_path, "group.png", (10, 2), (30, 0))  # ann, then a stranger whose candidates are beyond it
    assert run("match", group, "-g", db, "-p", PURPOSE, "--annotate", tmp_path / "out").exit_code == 0
    assert [label for _, label in drawn[0]] == ["ann", "no match"]


# -- the first-run key notice ----------------------------------------------------------------


def test_first_enrollment_says_where_the_key_was_created(fake_cli: None, tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    first = run("enroll", "ann", fake_photo(tmp_path, "ann.png", (10, 0)), "-g", db, "-c", "R1", "-p", PURPOSE)
    assert first.exit_code == 0, first.output
    (note,) = [line for line in first.stderr.splitlines() if line.startswith("note:")]
    assert "created the gallery key" in note and "back it up apart from the gallery" in note
    key_file = Path(note.split("created the gallery key ")[1].split(": back it up")[0])
    assert key_file.is_file()
    again = run("enroll", "bob", fake_photo(tmp_path, "bob.png", (20, 0)), "-g", db, "-c", "R2", "-p", PURPOSE)
    assert again.exit_code == 0 and "note:" not in again.stderr  # once


def test_key_notice_on_import_and_grant_but_not_with_json(fake_cli: None, manifest: Path, tmp_path: Path) -> None:
    assert "created the gallery key" in run("import", manifest, "-g", tmp_path / "a.db").stderr
    granted = run("consent", "grant", "ann", "-g", tmp_path / "b.db", "--ref", "R1", "-p", PURPOSE)
    assert granted.exit_code == 0 and "created the gallery key" in granted.stderr
    quiet = run("import", manifest, "-g", tmp_path / "c.db", "--json")
    assert quiet.exit_code == 0 and "note:" not in quiet.stderr


@pytest.mark.parametrize("args", [["purpose", "add", "visitor-check-in"], ["policy", "set", "tolerance", "0.5"],
                                  ["optout", "add", "--email", "jane@example.com"],
                                  ["apikey", "create", "desk-1", "--role", "operator"]],
                         ids=["purpose-add", "policy-set", "optout-add", "apikey-create"])
def test_every_verb_that_creates_a_gallery_says_where_its_key_is(fake_cli: None, tmp_path: Path, args: list[str]) -> None:
    """The newcomer who starts with `purpose add` (as the README suggests) is told to back the key up too."""
    created = run(*args, "-g", tmp_path / "new.db")
    assert created.exit_code == 0, created.output
    (note,) = [line for line in created.stderr.splitlines() if line.startswith("note:")]
    assert "created the gallery key" in note


def test_gallery_created_key_file(tmp_path: Path, consent: Consent) -> None:
    with Gallery(tmp_path / "g.db", encoder=FakeEncoder()) as g:
        assert g.created_key_file is None
        g.enroll("ann", [fake_photo(tmp_path, "a.png", (10, 0))], consent)
        assert g.created_key_file is not None and g.created_key_file.is_file()
    with Gallery(tmp_path / "g.db", encoder=FakeEncoder()) as g:
        g.enroll("ann", [fake_photo(tmp_path, "b.png", (10, 2))], consent)
        assert g.created_key_file is None
