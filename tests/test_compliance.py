"""The law's requirements as features: consent records, purpose, revocation, retention,
geography, opt-out, audit and subject access. A frozen clock drives every date."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from consentmatch import (
    Consent,
    ConsentError,
    Gallery,
    ImageError,
    InvalidArgumentError,
    NoFaceError,
    PolicyError,
    RequestNotFoundError,
    SubjectNotFoundError,
)
from consentmatch.cli import app
from consentmatch.consent import evidence_digest
from consentmatch.retention import ConsentTerm, destroy_by
from consentmatch.services import approvals, erasure

from .conftest import FakeEncoder, fake_photo

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
YEAR = timedelta(days=365)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gallery(tmp_path: Path, clock: Clock) -> Gallery:
    return Gallery(tmp_path / "g.db", encoder=FakeEncoder(), clock=clock, actor="desk-1")


@pytest.fixture
def any_gallery(gallery_location: str, clock: Clock) -> Iterator[Gallery]:
    """`gallery` on each store in turn (SQLite, PostgreSQL): the contract tests that take it run on both."""
    with Gallery(gallery_location, encoder=FakeEncoder(), clock=clock, actor="desk-1") as gallery:
        yield gallery


@pytest.fixture
def release(tmp_path: Path) -> Path:
    path = tmp_path / "release.pdf"
    path.write_bytes(b"%PDF signed written release")
    return path


def _subjects_found(gallery: Gallery, photo: Path, purpose: str | None = "door") -> list[str | None]:
    return [f.subject for f in gallery.match(photo, purpose=purpose).faces]


# -- consent records -----------------------------------------------------------------------


def test_grant_then_enroll_by_reference(any_gallery: Gallery, tmp_path: Path) -> None:
    record = any_gallery.grant_consent("alice", Consent("R1", ["door"], signer="guardian", notice_version="v3"))
    assert (record.subject, record.signer, record.notice_version, record.active) == ("alice", "guardian", "v3", True)
    assert any_gallery.subjects()[0].templates == 0
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    assert any_gallery.enroll("alice", [photo], "R1").consent_reference == "R1"
    assert _subjects_found(any_gallery, photo) == ["alice"]
    with pytest.raises(ConsentError, match="No consent has the reference 'R2'"):
        any_gallery.enroll("alice", [photo], "R2")
    with pytest.raises(ConsentError, match="already belongs to subject 'alice'"):
        any_gallery.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], "R1")


def test_bipa_and_cubi_need_a_written_release(gallery: Gallery, release: Path) -> None:
    for code in ("US-IL", "US-TX"):
        with pytest.raises(ConsentError, match="needs a written release"):
            gallery.grant_consent("alice", Consent(f"R-{code}", ["door"], jurisdiction=code))
    digest = evidence_digest(release)
    record = gallery.grant_consent("alice", Consent("R-IL", ["door"], jurisdiction="US-IL", evidence_sha256=digest))
    assert record.evidence_sha256 == digest
    gallery.close()
    assert b"signed written release" not in gallery.path.read_bytes()  # the file itself is never stored
    assert gallery.grant_consent("bob", Consent("R-CA", ["door"], jurisdiction="US-CA")).active  # no such rule


def test_photos_are_never_taken_from_the_web(gallery: Gallery, consent: Consent) -> None:
    from consentmatch import ImageError

    with pytest.raises(ImageError, match="never fetched from the web"):
        gallery.enroll("alice", ["https://example.com/alice.jpg"], consent)


# -- purpose -------------------------------------------------------------------------------


def test_purpose_is_required_unless_the_policy_says_otherwise(gallery: Gallery, tmp_path: Path) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    gallery.enroll("alice", [photo], Consent("R1", ["door"]))
    with pytest.raises(InvalidArgumentError, match="requires a purpose"):
        gallery.match(photo)
    gallery.set_policy("require_purpose", "false")
    assert _subjects_found(gallery, photo, purpose=None) == ["alice"]
    assert gallery.policy()["require_purpose"] is False


def test_policy_tolerance_is_the_default(gallery: Gallery, tmp_path: Path) -> None:
    gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", ["door"]))
    probe = fake_photo(tmp_path, "p.png", (10, 5))  # ~0.2 from alice
    assert _subjects_found(gallery, probe) == ["alice"]
    gallery.set_policy("tolerance", "0.1")
    assert _subjects_found(gallery, probe) == [None]
    with pytest.raises(InvalidArgumentError, match="max_tolerance"):  # issue 24: the cap follows the tolerance
        gallery.match(probe, purpose="door", tolerance=0.6)
    gallery.set_policy("max_tolerance", "0.6")
    assert gallery.match(probe, purpose="door", tolerance=0.6).faces[0].subject == "alice"
    with pytest.raises(InvalidArgumentError):
        gallery.set_policy("tolerance", "7")
    with pytest.raises(InvalidArgumentError, match="not a policy key"):
        gallery.set_policy("colour", "blue")


# -- revocation ----------------------------------------------------------------------------


def test_revocation_erases_at_once_keeps_a_tombstone_and_is_idempotent(any_gallery: Gallery, tmp_path: Path) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    any_gallery.enroll("alice", [photo, fake_photo(tmp_path, "a2.png", (10, 1))], Consent("R1", ["door"]))
    any_gallery.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], Consent("R2", ["door"]))
    assert _subjects_found(any_gallery, photo) == ["alice"]
    receipt = any_gallery.revoke_consent("R1")
    assert (receipt.reason, receipt.templates_removed, receipt.index_entries_removed, receipt.verified) == (
        "revoke", 2, 2, True)
    assert [c.subject for c in any_gallery.match(photo, purpose="door").faces[0].candidates] == ["bob"]
    (record,) = any_gallery.consents("alice")
    assert record.revoked_at == START and not record.active
    again = any_gallery.revoke_consent("R1")
    assert again.templates_removed == 0 and again.verified
    with pytest.raises(ConsentError, match="was revoked"):
        any_gallery.enroll("alice", [photo], Consent("R1", ["door"]))
    with pytest.raises(ConsentError, match="was revoked"):
        any_gallery.enroll("alice", [photo], "R1")
    any_gallery.enroll("alice", [photo], Consent("R1-b", ["door"]))  # a new consent, a new reference
    with pytest.raises(ConsentError, match="No consent has the reference"):
        any_gallery.revoke_consent("nope")


# -- retention -----------------------------------------------------------------------------


def test_retention_rules_by_jurisdiction() -> None:
    enrolled, end = START, START + 2 * YEAR
    assert destroy_by([ConsentTerm("US-IL", None)], enrolled, None) == (
        START + 3 * YEAR, "BIPA 15(a): 3 years after the last interaction")
    assert destroy_by([ConsentTerm("US-IL", end)], enrolled, None)[0] == end  # purpose end comes first
    assert destroy_by([ConsentTerm("US-IL", START + 5 * YEAR)], enrolled, START + YEAR)[0] == START + 4 * YEAR
    assert destroy_by([ConsentTerm("US-TX", end)], enrolled, None)[0] == end + YEAR
    assert destroy_by([ConsentTerm("US-TX", None)], enrolled, None)[0] is None
    assert destroy_by([ConsentTerm("FR", end)], enrolled, None)[0] == end
    assert destroy_by([ConsentTerm("GB", None)], enrolled, None)[0] is None
    assert destroy_by([ConsentTerm(None, START + 5 * YEAR)], enrolled, None)[0] == START + 3 * YEAR  # strictest
    assert destroy_by([ConsentTerm(None, end)], enrolled, None)[0] == end
    # the latest consent justifies keeping; no unrevoked consent: nothing does
    assert destroy_by([ConsentTerm("FR", end), ConsentTerm("FR", end + YEAR)], enrolled, None)[0] == end + YEAR
    assert destroy_by([], enrolled, None)[0] == enrolled


def test_bipa_subject_is_overdue_three_years_after_last_interaction(
    any_gallery: Gallery, clock: Clock, tmp_path: Path, release: Path
) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    il = Consent("R1", ["door"], jurisdiction="US-IL", evidence_sha256=evidence_digest(release))
    any_gallery.enroll("alice", [photo], il)
    any_gallery.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], Consent("R2", ["door"], jurisdiction="FR",
                                                                               expires_at=START + 10 * YEAR))
    (alice, bob) = sorted(any_gallery.retention(), key=lambda e: e.subject)
    assert alice.destroy_by == START + 3 * YEAR and not alice.overdue
    clock.now = START + 2 * YEAR
    assert _subjects_found(any_gallery, photo) == ["alice"]  # an interaction: the clock restarts
    assert any_gallery.retention()[0].destroy_by == START + 5 * YEAR
    clock.now = START + 5 * YEAR + timedelta(days=1)
    assert any_gallery.retention()[0].overdue
    assert any_gallery.match(photo, purpose="door").faces[0].candidates[0].subject == "bob"  # never alice, before purge
    assert not any_gallery.verify("alice", photo, purpose="door").match  # overdue: a non-match (issue 24)
    receipts = any_gallery.purge()
    assert [(r.subject, r.reason, r.templates_removed, r.verified) for r in receipts] == [("alice", "purge", 1, True)]
    assert [e.subject for e in any_gallery.retention()] == ["bob"]
    assert any_gallery.purge() == []


def test_expired_consent_stops_matching_and_texas_keeps_a_year(any_gallery: Gallery, clock: Clock, tmp_path: Path,
                                                              release: Path) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    any_gallery.enroll("alice", [photo], Consent("R1", ["door"], jurisdiction="US-TX", expires_at=START + YEAR,
                                             evidence_sha256=evidence_digest(release)))
    assert any_gallery.retention()[0].destroy_by == START + 2 * YEAR
    clock.now = START + YEAR + timedelta(days=1)
    assert any_gallery.match(photo, purpose="door").faces[0].candidates == ()  # expired: never searched
    assert not any_gallery.retention()[0].overdue
    clock.now = START + 2 * YEAR + timedelta(days=1)
    assert any_gallery.retention()[0].overdue


# -- geography -----------------------------------------------------------------------------


def _photo_at(tmp_path: Path, name: str, latitude: float, longitude: float) -> Path:
    def dms(value: float) -> tuple[float, float, float]:
        value = abs(value)
        degrees, minutes = int(value), int(value % 1 * 60)
        return float(degrees), float(minutes), round((value - degrees - minutes / 60) * 3600, 4)

    exif = Image.Exif()
    exif[0x8825] = {1: "N" if latitude >= 0 else "S", 2: dms(latitude), 3: "E" if longitude >= 0 else "W",
                    4: dms(longitude)}
    path = fake_photo(tmp_path, name, (10, 0))
    Image.open(path).save(path, exif=exif)
    return path


@pytest.mark.parametrize(
    ("place", "latitude", "longitude", "refused"),
    [
        ("chicago", 41.8781, -87.6298, True),
        ("springfield-il", 39.7817, -89.6501, True),
        ("los-angeles", 34.0522, -118.2437, False),
        ("st-louis-mo", 38.6270, -90.1994, False),
    ],
)
def test_photos_taken_in_an_excluded_region_are_refused(
    gallery: Gallery, tmp_path: Path, place: str, latitude: float, longitude: float, refused: bool
) -> None:
    gallery.set_policy("excluded_regions", "US-IL, US-TX")
    photo = _photo_at(tmp_path, f"{place}.png", latitude, longitude)
    consent = Consent("R1", ["door"], jurisdiction="US-CA")
    if refused:
        with pytest.raises(PolicyError, match=rf"{place}.png' was taken in US-IL"):
            gallery.enroll("alice", [photo], consent)
        assert gallery.subjects() == []
        (refusal,) = [e for e in gallery.audit() if e.details.get("outcome") == "refused"]
        assert (refusal.action, refusal.subject, refusal.details["error"]) == ("enroll", "alice", "PolicyError")
        assert "US-IL" not in refusal.details["reason"]  # the trail holds no location
    else:
        gallery.enroll("alice", [photo], consent)
    gallery.close()
    raw = gallery.path.read_bytes()
    assert f"{latitude:.2f}".encode() not in raw and f"{abs(longitude):.2f}".encode() not in raw  # no GPS kept


def test_photos_without_gps_and_galleries_without_the_policy_pass(gallery: Gallery, tmp_path: Path) -> None:
    gallery.enroll("alice", [_photo_at(tmp_path, "chicago.png", 41.8781, -87.6298)], Consent("R1", ["door"]))
    gallery.set_policy("excluded_regions", "US-IL")
    gallery.enroll("bob", [fake_photo(tmp_path, "nogps.png", (20, 0))], Consent("R2", ["door"]))
    with pytest.raises(InvalidArgumentError, match="not ISO 3166"):
        gallery.set_policy("excluded_regions", "Illinois")


# -- opt-out -------------------------------------------------------------------------------


def test_subject_optout_erases_and_refuses(any_gallery: Gallery, tmp_path: Path) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    any_gallery.enroll("alice", [photo], Consent("R1", ["door"]))
    (receipt,) = any_gallery.add_optout(subject="alice")
    assert (receipt.reason, receipt.templates_removed, receipt.verified) == ("optout", 1, True)
    assert any_gallery.match(photo, purpose="door").faces[0].candidates == ()
    with pytest.raises(ConsentError, match="do-not-enroll"):
        any_gallery.enroll("alice", [photo], Consent("R9", ["door"]))
    with pytest.raises(ConsentError, match="do-not-enroll"):
        any_gallery.grant_consent("alice", Consent("R9", ["door"]))
    assert any_gallery.add_optout(subject="carol") == []  # before any enrollment: refused later
    assert any_gallery.remove_optout(subject="alice")
    any_gallery.enroll("alice", [photo], Consent("R9", ["door"]))


def test_email_optout_is_a_salted_hash(any_gallery: Gallery, gallery_location: str, tmp_path: Path,
                                      request: pytest.FixtureRequest) -> None:
    gallery = any_gallery
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    gallery.enroll("alice", [photo], Consent("R1", ["door"]), email="Alice@Example.com")
    (receipt,) = gallery.add_optout(email="alice@example.com ")
    assert receipt.subject == "alice" and receipt.templates_removed == 1
    (entry,) = gallery.optouts()
    assert entry.kind == "email" and len(entry.value) == 64 and "example" not in entry.value
    with pytest.raises(ConsentError, match="do-not-enroll"):
        gallery.enroll("alicia", [photo], Consent("R2", ["door"]), email="ALICE@example.com")
    gallery.close()
    if gallery_location.startswith("postgresql://"):  # what a backup of the database holds
        database = gallery_location.split("///", 1)[1].split("?", 1)[0]
        stored = request.getfixturevalue("pg_cluster").dump(database)
    else:
        stored = Path(gallery_location).read_bytes()
    assert b"example.com" not in stored
    with Gallery(tmp_path / "other.db", encoder=FakeEncoder()) as other:  # another gallery, another salt
        other.add_optout(email="alice@example.com")
        assert other.optouts()[0].value != entry.value


# -- audit ---------------------------------------------------------------------------------


def test_every_call_is_audited_with_its_actor_and_nothing_biometric(any_gallery: Gallery, tmp_path: Path) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    any_gallery.enroll("alice", [photo], Consent("R1", ["door"]))
    any_gallery.match(photo, purpose="door", actor="guard-7")
    any_gallery.verify("alice", photo, purpose="door")
    any_gallery.set_policy("tolerance", 0.5)
    any_gallery.export("alice")
    any_gallery.revoke_consent("R1")
    any_gallery.forget("alice")
    events = any_gallery.audit()
    assert [e.action for e in events] == [
        "consent-grant", "enroll", "match", "verify", "policy-set", "export", "consent-revoke", "forget"]
    assert [e.actor for e in events][:3] == ["desk-1", "desk-1", "guard-7"]
    match = events[2]
    assert match.purpose == "door" and match.details["faces"] == 1 and match.details["subjects"] == ["alice"]
    assert [e.action for e in any_gallery.audit("alice")] == [e.action for e in events if e.action != "policy-set"]
    for event in events:
        text = json.dumps(event.details)
        assert "embedding" not in text and "gps" not in text.lower() and len(text) < 600
    check = any_gallery.verify_audit()
    assert check.intact and check.events == 8 and check.head == events[-1].hash


def test_verify_gives_one_answer_whether_enrolled_or_not_and_records_it(
    any_gallery: Gallery, tmp_path: Path, clock: Clock
) -> None:
    alice, bob = fake_photo(tmp_path, "a.png", (10, 0)), fake_photo(tmp_path, "b.png", (20, 0))
    any_gallery.enroll("alice", [alice], Consent("R1", ["door"]))
    any_gallery.grant_consent("carol", Consent("R3", ["door"]))  # consented, but no photo enrolled
    any_gallery.declare_purpose("payroll")  # declared: alice's missing consent for it is the answer tested
    answers = {}
    for name, purpose in [("zed", "door"), ("alice", "payroll"), ("carol", "door"), ("alice", "door")]:
        # issue 24: no active enrollment is answered as a non-match (alice vs bob's face), one body for all
        result = any_gallery.verify(name, bob, purpose=purpose).to_dict()
        answers[name, purpose] = {k: v for k, v in result.items() if k not in ("subject", "at", "audit_event")}
    assert len({json.dumps(a, sort_keys=True) for a in answers.values()}) == 1
    assert answers["zed", "door"]["match"] is False and answers["zed", "door"]["distance"] is None
    with pytest.raises(NoFaceError):
        any_gallery.verify("alice", fake_photo(tmp_path, "none.png"), purpose="door")
    events = any_gallery.audit()
    refused = [(e.action, e.subject, e.purpose, e.details["error"]) for e in events if e.details.get("outcome") == "refused"]
    assert refused == [
        ("verify", "zed", "door", "NoActiveEnrollmentError"),
        ("verify", "alice", "payroll", "NoActiveEnrollmentError"),
        ("verify", "carol", "door", "NoActiveEnrollmentError"),
        ("verify", "alice", "door", "NoFaceError"),
    ]
    failed = [e for e in events if e.action == "verify" and e.subject == "alice" and e.purpose == "door"][0]
    assert failed.details["match"] is False and "outcome" not in failed.details  # a failed 1:1 check of alice
    assert [e.action for e in any_gallery.audit("zed")] == ["verify"]
    assert any_gallery.verify_audit().intact


def test_refused_enrollments_and_matches_are_recorded(any_gallery: Gallery, tmp_path: Path) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    any_gallery.enroll("alice", [photo], Consent("R1", ["door"]))
    any_gallery.add_optout(subject="bob")
    for call, error in [
        (lambda: any_gallery.enroll("bob", [photo], Consent("R2", ["door"])), ConsentError),  # opted out
        (lambda: any_gallery.enroll("carol", [photo], None), ConsentError),
        (lambda: any_gallery.enroll("carol", [photo], Consent("R1", ["door"])), ConsentError),  # alice's reference
        (lambda: any_gallery.enroll("carol", [photo], Consent("R3", ["door"])), PolicyError),  # alice's face
        (lambda: any_gallery.enroll("carol", [fake_photo(tmp_path, "none.png")], Consent("R3", ["door"])), NoFaceError),
        (lambda: any_gallery.match(tmp_path / "missing.jpg", purpose="door"), ImageError),
    ]:
        with pytest.raises(error):
            call()
    (bad,) = list(any_gallery.match_many([tmp_path / "missing.jpg"], purpose="door"))
    assert bad.error is not None
    events = [e for e in any_gallery.audit() if e.details.get("outcome") == "refused"]
    assert [(e.action, e.subject) for e in events] == [
        ("enroll", "bob"), ("enroll", "carol"), ("enroll", "carol"), ("enroll", "carol"), ("enroll", "carol"),
        ("match", None), ("match", None)]
    assert [e.details["error"] for e in events] == [
        "ConsentError", "ConsentError", "ConsentError", "PolicyError", "NoFaceError", "ImageError", "ImageError"]
    assert all(e.purpose == "door" for e in events[-2:]) and "missing.jpg" in events[-1].details["reason"]
    assert [e.subject for e in any_gallery.subjects()] == ["alice"]
    assert any_gallery.verify_audit().intact


def test_a_refusal_creates_no_gallery_and_a_failing_record_hides_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consentmatch.storage.sqlite_rows import SqliteTransaction

    path = tmp_path / "new.db"
    with Gallery(path, encoder=FakeEncoder()) as gallery:
        with pytest.raises(NoFaceError):
            gallery.enroll("alice", [fake_photo(tmp_path, "none.png")], Consent("R1", ["door"]))
        assert not path.exists()
        gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", ["door"]))
        real_append = SqliteTransaction.append_audit

        def full_disk(tx: SqliteTransaction, **event: object) -> int:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(SqliteTransaction, "append_audit", full_disk)
        with pytest.raises(NoFaceError):
            gallery.verify("zed", fake_photo(tmp_path, "none.png"), purpose="door")
        monkeypatch.setattr(SqliteTransaction, "append_audit", real_append)
        assert [e.action for e in gallery.audit()] == ["consent-grant", "enroll"]


def _tamper(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    conn.executescript("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;" + ";".join(statements))
    conn.close()


@pytest.mark.parametrize(
    ("statements", "broken_at", "problem"),
    [
        (["UPDATE audit SET actor = 'someone-else' WHERE seq = 2"], 2, "was edited"),
        (["DELETE FROM audit WHERE seq = 2"], 2, "missing"),
        (["DELETE FROM audit WHERE seq = 4"], 4, "events deleted"),
        (["UPDATE audit SET seq = seq + 1 WHERE seq >= 3 AND seq = (SELECT max(seq) FROM audit)",
          "UPDATE audit SET seq = seq + 1 WHERE seq = 3",
          "INSERT INTO audit VALUES (3, '2026-01-01T00:00:00.000000+00:00', 'x', 'match', NULL, 'door', '{}', "
          "(SELECT hash FROM audit WHERE seq = 2), 'forged')"], 3, "was edited"),
    ],
    ids=["edited", "deleted-middle", "deleted-last", "inserted"],
)
def test_audit_verify_names_the_first_broken_link(
    gallery: Gallery, tmp_path: Path, statements: list[str], broken_at: int, problem: str
) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    gallery.enroll("alice", [photo], Consent("R1", ["door"]))
    gallery.match(photo, purpose="door")
    gallery.match(photo, purpose="door")
    gallery.close()
    conn = sqlite3.connect(gallery.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit")
    conn.close()
    _tamper(gallery.path, *statements)
    check = gallery.verify_audit()
    assert not check.intact and check.broken_at == broken_at and problem in (check.problem or "")
    result = CliRunner().invoke(app, ["audit", "--verify", "-g", str(gallery.path)])
    assert result.exit_code == 1 and f"broken at event {broken_at}" in result.stderr


# -- subject access ------------------------------------------------------------------------


def test_export_bundle_has_no_embeddings(any_gallery: Gallery, tmp_path: Path) -> None:
    any_gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", ["door"], jurisdiction="GB",
                                                                              expires_at=START + YEAR))
    bundle = any_gallery.export("alice")
    assert [c["reference"] for c in bundle["consents"]] == ["R1"]
    (template,) = bundle["templates"]
    assert set(template) == {"id", "created_at", "photo_sha256", "box", "consent_reference"}
    assert bundle["retention"]["destroy_by"] == (START + YEAR).isoformat()
    assert [e["action"] for e in bundle["audit"]] == ["consent-grant", "enroll", "export"]
    assert len(json.dumps(bundle)) < 5000  # 128 floats would not fit
    with pytest.raises(SubjectNotFoundError):
        any_gallery.export("nobody")


# -- the CLI -------------------------------------------------------------------------------


def test_compliance_commands(tmp_path: Path, release: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("consentmatch.vision.default_encoder", lambda settings=None: FakeEncoder())
    env = {"CONSENTMATCH_GALLERY": str(tmp_path / "g.db"), "CONSENTMATCH_ACTOR": "ops:jane"}
    runner = CliRunner()

    def run(*args: object, code: int = 0) -> str:
        result = runner.invoke(app, [str(a) for a in args], env=env)
        assert result.exit_code == code, result.output
        return result.stdout

    photo = fake_photo(tmp_path, "a.png", (10, 0))
    run("consent", "grant", "alice", "--ref", "R1", "-p", "door", "--jurisdiction", "US-IL", code=1)
    out = run("consent", "grant", "alice", "--ref", "R1", "-p", "door", "--jurisdiction", "US-IL",
              "--evidence", release, "--notice-version", "v3", "--json")
    assert json.loads(out)["evidence_sha256"] == evidence_digest(release)
    run("enroll", "alice", photo, "--consent-ref", "R1")
    assert json.loads(run("consent", "show", "R1", "--json"))["active"] is True
    assert "R1" in run("consent", "list", "--subject", "alice")
    assert json.loads(run("policy", "set", "excluded_regions", "US-TX", "--json"))["excluded_regions"] == ["US-TX"]
    assert "excluded_regions = US-TX" in run("policy", "show")
    (entry,) = [json.loads(line) for line in run("retention", "--json").splitlines()]
    assert entry["subject"] == "alice" and entry["rule"].startswith("BIPA")
    assert "Nothing is due" in run("purge")  # nothing to confirm, so nothing asked (exit 0 off a terminal)
    receipt = json.loads(run("consent", "revoke", "R1", "--yes", "--json"))
    assert receipt["templates_removed"] == 1 and receipt["verified"] is True
    run("optout", "add", "--email", "bob@example.com")
    assert json.loads(run("optout", "list", "--json"))["kind"] == "email"
    run("optout", "add", code=2)  # neither --subject nor --email
    events = [json.loads(line) for line in run("audit", "--json").splitlines()]
    assert {e["actor"] for e in events} == {"ops:jane"}
    assert "intact" in run("audit", "--verify")
    run("export", "alice", "-o", tmp_path / "alice.json")
    assert json.loads((tmp_path / "alice.json").read_text())["subject"] == "alice"
    run("match", photo, code=2)  # policy requires a purpose


def test_gps_block_that_is_malformed_is_ignored() -> None:
    from consentmatch.images import load_photo

    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (1.0, 0.0), 3: "E", 4: (200.0, 0.0, 0.0)}  # too few parts; out of range
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(buffer, "PNG", exif=exif)
    assert load_photo(buffer.getvalue()).gps is None


def test_far_dates_and_odd_evidence_are_clean_errors(gallery: Gallery, tmp_path: Path) -> None:
    from consentmatch.consent import parse_expiry

    with pytest.raises(InvalidArgumentError, match="not a date"):
        parse_expiry("9999-12-31T23:00-05:00")  # past the end of representable time in UTC
    far = Consent("R1", ["door"], jurisdiction="US-TX", expires_at=datetime(9999, 12, 31, tzinfo=timezone.utc),
                  evidence_sha256="a" * 64)
    gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], far)  # CUBI's +1 year saturates
    assert gallery.retention()[0].destroy_by is not None
    with pytest.raises(InvalidArgumentError, match="not a regular file"):
        evidence_digest("/dev/zero")
    with pytest.raises(InvalidArgumentError, match="not a regular file"):
        evidence_digest(tmp_path)


def test_purge_asks_only_when_something_is_due(gallery_location: str, tmp_path: Path, clock: Clock,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing due: said, exit 0, no question (a script without a terminal is not failed).
    Someone due: asked, and the receipt reads as a receipt (issue 14: 11). On both stores."""
    monkeypatch.setattr("consentmatch.vision.default_encoder", lambda settings=None: FakeEncoder())
    path = gallery_location
    runner = CliRunner()
    with Gallery(path, encoder=FakeEncoder(), clock=clock) as gallery:
        gallery.enroll("alice", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", ["door"], jurisdiction="GB",
                                                                                  expires_at=START + YEAR))
    nothing = runner.invoke(app, ["purge", "-g", str(path)], input="")
    assert nothing.exit_code == 0 and "Nothing is due" in nothing.stdout and "[y/N]" not in nothing.output
    assert runner.invoke(app, ["purge", "-g", str(path), "--json"]).stdout == ""
    with Gallery(path, encoder=FakeEncoder(), clock=clock) as gallery:  # a consent that ended long ago
        gallery.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], Consent("R2", ["door"], jurisdiction="GB",
                                                                                expires_at=START + timedelta(days=1)))
    asked = runner.invoke(app, ["purge", "-g", str(path)], input="")
    assert asked.exit_code == 1 and "1 subject(s) past their retention date?" in asked.output
    done = runner.invoke(app, ["purge", "-g", str(path), "--yes"])
    assert done.exit_code == 0, done.output
    assert "Erased 'bob' (purge): 1 template(s) deleted" in done.stdout
    assert " 0 " not in done.stdout and "Purged 1 subject(s)." in done.stdout


def test_an_erasure_receipt_says_what_a_zero_means(gallery_location: str, tmp_path: Path, release: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """'0 consent record(s) ... 0 entries from the index' read like a failure: a revoked
    record is kept as a tombstone, and a process that loaded no index had nothing to remove."""
    monkeypatch.setattr("consentmatch.vision.default_encoder", lambda settings=None: FakeEncoder())
    env = {"CONSENTMATCH_GALLERY": gallery_location}
    runner = CliRunner()
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    assert runner.invoke(app, ["enroll", "alice", str(photo), "-c", "R1", "-p", "door"], env=env).exit_code == 0
    revoked = runner.invoke(app, ["consent", "revoke", "R1", "--yes"], env=env).stdout
    assert revoked.startswith("Erased 'alice' (revoke): 1 template(s) deleted, consent records kept as non-biometric "
                              "tombstones, the search index is rebuilt from the store at the next search; post-check passed")
    forgotten = runner.invoke(app, ["forget", "alice", "--yes"], env=env).stdout
    assert forgotten.startswith("Erased 'alice' (forget): no template left to delete, 1 consent record(s) deleted; ")


# -- erasure reaches the search requests held for approval ---------------------------------


def _held_office(gallery: Gallery, tmp_path: Path, first: str = "alice") -> dict[str, Path]:
    """`first` (alice), bob and carol enrolled for 'staff-access', a purpose that needs approval;
    a probe photo of each."""
    reds = {first: 10, "bob": 20, "carol": 30}
    for number, (name, red) in enumerate(reds.items()):
        gallery.enroll(name, [fake_photo(tmp_path, f"{number}.png", (red, 0))],
                       Consent(f"R{number}", ["door", "staff-access"], jurisdiction="GB",
                               expires_at=START + timedelta(days=1)))
    gallery.set_policy("approval_purposes", "staff-access")
    return {name: fake_photo(tmp_path, f"{number}-probe.png", (red, 3)) for number, (name, red) in enumerate(reds.items())}


def _probe_key_live(gallery: Gallery, request_id: str) -> bool:
    """Whether the data key a request's probe was sealed under is still in the key store."""
    with gallery.context.store.read() as tx:
        held: Any = tx  # both engines' transactions have a connection that takes sqlite3's calls
        (key_id,) = held.conn.execute("SELECT probe_key FROM search_requests WHERE request_id = ?", (request_id,)).fetchone()
    return gallery.context.store.keys.data_key(str(key_id)) is not None


@pytest.mark.parametrize("how", ["forget", "revoke", "optout", "purge"])
def test_an_erasure_closes_the_pending_requests_of_its_subject_and_destroys_their_probes(
    any_gallery: Gallery, tmp_path: Path, gallery_location: str, clock: Clock, monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """Red-team finding: a pending verify of a forgotten subject kept its probe, which an approver
    could still download. Every erasure (forget, revoke, opt-out, purge) closes it as `erased`,
    destroys the probe and shreds its key, in its own transaction; a pending match names nobody
    and stays."""
    probes = _held_office(any_gallery, tmp_path)
    of_alice = any_gallery.request_verify("alice", probes["alice"], purpose="staff-access", case_ref="C-1",
                                          reason="badge lost", actor="desk-2")
    of_bob = any_gallery.request_verify("bob", probes["bob"], purpose="staff-access", case_ref="C-2",
                                        reason="badge lost", actor="desk-2")
    anyone = any_gallery.request_match(probes["alice"], purpose="staff-access", case_ref="C-3", reason="tailgating",
                                       actor="desk-2")
    assert approvals.request_probe(any_gallery.context, of_alice.request_id) == probes["alice"].read_bytes()
    assert _probe_key_live(any_gallery, of_alice.request_id)
    clock.now = START + timedelta(days=2)  # the consents' term is over (purge), the requests' 72 hours are not
    erase = {"forget": lambda: [any_gallery.forget("alice", actor="hr-1")],
             "revoke": lambda: [any_gallery.revoke_consent("R0", actor="hr-1")],
             "optout": lambda: any_gallery.add_optout(subject="alice", actor="hr-1"),
             "purge": lambda: [r for r in any_gallery.purge(actor="hr-1") if r.subject == "alice"]}[how]
    (receipt,) = erase()
    assert receipt.verified and receipt.templates_removed == 1
    closed = any_gallery.search_request(of_alice.request_id)
    assert (closed.status, closed.decision_reason, closed.result) == ("erased", erasure.ERASED_PENDING, None)
    with pytest.raises(RequestNotFoundError, match="erased, and its probe destroyed"):
        approvals.request_probe(any_gallery.context, of_alice.request_id)
    with pytest.raises(InvalidArgumentError, match="no longer pending"):
        any_gallery.approve_request(of_alice.request_id, reason="ok", actor="lt-1")
    with any_gallery.context.store.read() as tx:
        assert tx.request_probe(of_alice.request_id) is None  # the sealed copy is gone, not only its key
    assert not _probe_key_live(any_gallery, of_alice.request_id)
    if how != "purge":  # purge: bob and carol were due too
        for other in (of_bob, anyone):
            assert any_gallery.search_request(other.request_id).status == "pending"
            assert approvals.request_probe(any_gallery.context, other.request_id)
    (event,) = any_gallery.audit(action="request-erase", subject="alice")
    assert event.actor == "hr-1" and event.purpose == "staff-access"
    assert event.details == {"request": of_alice.request_id, "requester": "desk-2", "change": "closed",
                             "erasure": receipt.reason}
    assert of_alice.request_id in [r.request_id for r in any_gallery.search_requests(status="erased")]
    check = any_gallery.verify_audit()  # the closed row's MAC was renewed, as a decision's is
    assert check.intact and check.problem is None
    monkeypatch.setattr("consentmatch.vision.default_encoder", lambda settings=None: FakeEncoder())
    listed = CliRunner().invoke(app, ["request", "list", "-g", gallery_location, "--status", "erased", "--json"])
    assert listed.exit_code == 0, listed.output
    assert of_alice.request_id in [json.loads(line)["request_id"] for line in listed.stdout.splitlines()]


def test_an_erasure_clears_every_kept_result_that_names_its_subject(any_gallery: Gallery, tmp_path: Path) -> None:
    """Red-team finding: an approved verify kept `{"subject": "obama", "match": true, "distance":
    0.351101}` after forget obama, for its requester to read. A verify of the subject, and a match
    whose faces or candidates name it, lose their result (the whole of it; `error` says why);
    results that do not name it stay. The name is found in the stored JSON however it is written
    (non-ASCII escaped; quotes; LIKE's wildcards)."""
    zoe = 'zoë "z" 5%_!'
    probes = _held_office(any_gallery, tmp_path, zoe)

    def approved(request: Any) -> str:
        any_gallery.approve_request(request.request_id, reason="reviewed", actor="lt-1")
        return str(request.request_id)

    verify = approved(any_gallery.request_verify(zoe, probes[zoe], purpose="staff-access", case_ref="C-1",
                                                 reason="r", actor="desk-2"))
    found = approved(any_gallery.request_match(probes[zoe], purpose="staff-access", case_ref="C-2", reason="r",
                                               actor="desk-2"))
    near = approved(any_gallery.request_match(probes["bob"], purpose="staff-access", case_ref="C-3", reason="r",
                                              top_k=2, actor="desk-2"))  # bob, zoe a candidate beyond the tolerance
    other = approved(any_gallery.request_match(probes["carol"], purpose="staff-access", case_ref="C-4", reason="r",
                                               top_k=1, actor="desk-2"))
    denied = any_gallery.request_verify(zoe, probes[zoe], purpose="staff-access", case_ref="C-5", reason="r",
                                        actor="desk-2")
    any_gallery.deny_request(denied.request_id, reason="no", actor="lt-1")
    before = {i: any_gallery.search_request(i, actor="desk-2").result for i in (verify, found, near, other)}
    assert before[verify] is not None and before[verify]["match"] and before[verify]["distance"] is not None
    named = json.dumps(zoe, ensure_ascii=False)  # the name as a JSON string, quotes escaped
    assert named in json.dumps(before[near], ensure_ascii=False)
    assert named not in json.dumps(before[other], ensure_ascii=False)
    any_gallery.forget(zoe, actor="hr-1")
    for request_id in (verify, found, near):
        kept = any_gallery.search_request(request_id, actor="desk-2")
        assert (kept.status, kept.result, kept.error) == ("approved", None, erasure.ERASED_RESULT)
        assert named not in json.dumps({k: v for k, v in kept.to_dict().items() if k != "subject"}, ensure_ascii=False)
    assert any_gallery.search_request(other, actor="desk-2").result == before[other]
    assert any_gallery.search_request(denied.request_id).status == "denied"  # nothing of zoe held: unchanged
    changes = {e.details["request"]: e.details["change"] for e in any_gallery.audit(action="request-erase")}
    assert changes == {verify: "result-cleared", found: "result-cleared", near: "result-cleared"}
    check = any_gallery.verify_audit()
    assert check.intact and check.problem is None


def test_a_result_is_not_kept_for_a_subject_erased_while_its_search_ran(any_gallery: Gallery, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An approved search runs after its decision commits and its result is written after it: an
    erasure in between (another process, another node) finds no result to clear, so the write
    itself checks that every subject the result measures is still enrolled."""
    probes = _held_office(any_gallery, tmp_path)
    held = any_gallery.request_verify("alice", probes["alice"], purpose="staff-access", case_ref="C-1", reason="r",
                                      actor="desk-2")
    run = approvals._run

    def run_then_forget(ctx: Any, request: Any, probe: bytes) -> Any:
        done = run(ctx, request, probe)
        erasure.forget(ctx, "alice", "hr-1")
        return done

    monkeypatch.setattr(approvals, "_run", run_then_forget)
    decided = any_gallery.approve_request(held.request_id, reason="reviewed", actor="lt-1")
    assert (decided.result, decided.error) == (None, erasure.ERASED_RESULT)
    kept = any_gallery.search_request(held.request_id, actor="desk-2")
    assert (kept.status, kept.result, kept.error) == ("approved", None, erasure.ERASED_RESULT)
    assert [e.details["change"] for e in any_gallery.audit(action="request-erase")] == ["result-cleared"]
