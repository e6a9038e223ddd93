"""Declared purposes (issue 14): a typo in a purpose is a usage error, not a silent "no match"."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consentmatch import Consent, ConsentError, Gallery, InvalidArgumentError, PurposeInfo
from consentmatch.cli import app
from consentmatch.storage.migrations import _declare_purposes

from .conftest import PURPOSE, FakeEncoder, fake_photo, gallery_rows

runner = CliRunner()


def run(*args: str | Path, input: str | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("consentmatch.vision.default_encoder", lambda settings=None: FakeEncoder())


@pytest.fixture
def enrolled(fake_cli: None, tmp_path: Path) -> tuple[Path, Path]:
    """A gallery with alice enrolled for visitor-check-in, and a photo of her."""
    gallery, photo = tmp_path / "g.db", fake_photo(tmp_path, "a.png", (10, 0))
    done = run("enroll", "alice", photo, "-g", gallery, "--consent-ref", "R1", "--purpose", PURPOSE)
    assert done.exit_code == 0, done.output
    return gallery, photo


def test_a_typo_in_the_purpose_is_a_usage_error_naming_the_declared_one(enrolled: tuple[Path, Path]) -> None:
    gallery, photo = enrolled
    before = gallery_rows(gallery)
    for command in (["match", photo], ["verify", "alice", photo]):
        result = run(*command, "-g", gallery, "-p", "visitor-checkin", "--json")
        assert result.exit_code == 2, result.output
        assert ("'visitor-checkin' is not a purpose this gallery serves: did you mean 'visitor-check-in'? "
                "`consentmatch purpose list` shows them.") in " ".join(result.stderr.split())
        assert "Traceback" not in result.output
    assert gallery_rows(gallery) == before


def test_a_declared_purpose_nobody_covers_matches_nobody(enrolled: tuple[Path, Path]) -> None:
    gallery, photo = enrolled
    assert run("purpose", "add", "staff-entry", "-g", gallery).exit_code == 0
    result = run("match", photo, "-g", gallery, "-p", "staff-entry", "--json")
    assert result.exit_code == 0, result.output
    (body,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert body["faces"][0]["subject"] is None and body["faces"][0]["candidates"] == []
    assert json.loads(run("match", photo, "-g", gallery, "-p", PURPOSE, "--json").stdout)["faces"][0]["subject"] == "alice"


def test_a_gallery_from_before_declared_purposes_keeps_matching(tmp_path: Path) -> None:
    path, photo = tmp_path / "old.db", fake_photo(tmp_path, "a.png", (10, 0))
    with Gallery(path, encoder=FakeEncoder()) as gallery:
        gallery.enroll("alice", [photo], Consent("R1", [PURPOSE]))
    conn = sqlite3.connect(path)
    with conn:  # the purposes table as schema step 6 leaves a gallery that had none
        conn.execute("DROP TABLE purposes")
        _declare_purposes(conn)
    conn.close()
    with Gallery(path, encoder=FakeEncoder()) as gallery:
        assert [p.purpose for p in gallery.purposes()] == [PURPOSE]
        assert gallery.match(photo, purpose=PURPOSE).faces[0].subject == "alice"


def test_closed_purposes_refuses_an_undeclared_purpose_in_a_consent(fake_gallery: Gallery, tmp_path: Path) -> None:
    fake_gallery.set_policy("closed_purposes", "true")
    fake_gallery.declare_purpose(PURPOSE)
    with pytest.raises(ConsentError, match="'visitor-checkin' is not a purpose this gallery serves: "
                                           "did you mean 'visitor-check-in'\\? declare it first"):
        fake_gallery.grant_consent("alice", Consent("R1", ["visitor-checkin"]))
    with pytest.raises(ConsentError, match="closed_purposes"):
        fake_gallery.enroll("bob", [fake_photo(tmp_path, "b.png", (20, 0))], Consent("R2", ["lobby"]))
    assert fake_gallery.consents() == [] and fake_gallery.subjects() == []
    fake_gallery.grant_consent("alice", Consent("R1", [PURPOSE]))  # a declared one is fine
    assert [p.purpose for p in fake_gallery.purposes()] == [PURPOSE]


def test_open_purposes_declare_themselves(fake_gallery: Gallery) -> None:
    fake_gallery.grant_consent("alice", Consent("R1", [PURPOSE, "lobby"]))
    assert [(p.purpose, p.active_consents) for p in fake_gallery.purposes()] == [("lobby", 1), (PURPOSE, 1)]


def test_purpose_list_counts_active_consents(enrolled: tuple[Path, Path]) -> None:
    gallery, _ = enrolled
    assert run("consent", "grant", "bob", "-g", gallery, "--ref", "R2", "-p", PURPOSE, "-p", "lobby").exit_code == 0
    assert run("purpose", "add", "staff-entry", "-g", gallery, "--json").exit_code == 0
    assert run("consent", "revoke", "R2", "-g", gallery, "--yes").exit_code == 0
    result = run("purpose", "list", "-g", gallery, "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["purpose"], r["active_consents"], r["consents"]) for r in rows] == [
        ("lobby", 0, 1), ("staff-entry", 0, 0), (PURPOSE, 1, 2)
    ]
    table = run("purpose", "list", "-g", gallery)
    assert table.exit_code == 0 and "staff-entry" in table.stdout
    with Gallery(gallery, encoder=FakeEncoder()) as g:
        info = next(p for p in g.purposes() if p.purpose == PURPOSE)
        assert isinstance(info, PurposeInfo) and info.to_dict()["active_consents"] == 1
        actions = [e.action for e in g.audit()]
    assert "purpose-add" in actions


def test_remove_is_refused_while_consents_list_the_purpose(enrolled: tuple[Path, Path]) -> None:
    gallery, photo = enrolled
    before = gallery_rows(gallery)
    refused = run("purpose", "remove", PURPOSE, "-g", gallery, "--yes")
    assert refused.exit_code == 2 and "listed by 1 consent(s)" in refused.stderr
    assert gallery_rows(gallery) == before
    assert run("purpose", "add", "staff-entry", "-g", gallery).exit_code == 0
    kept = run("purpose", "remove", "staff-entry", "-g", gallery, input="n\n")
    assert kept.exit_code == 1 and "Purpose kept" in kept.stderr
    assert run("purpose", "remove", "staff-entry", "-g", gallery, "--yes").exit_code == 0
    assert run("match", photo, "-g", gallery, "-p", "staff-entry").exit_code == 2  # no longer declared
    with Gallery(gallery, encoder=FakeEncoder()) as g:
        assert g.remove_purpose("staff-entry") is False
        assert g.audit()[-1].action == "purpose-remove"
        with pytest.raises(InvalidArgumentError, match="revoke them first"):
            g.remove_purpose(PURPOSE)


def test_require_purpose_false_lets_the_cli_search_without_one(enrolled: tuple[Path, Path]) -> None:
    gallery, photo = enrolled
    required = run("match", photo, "-g", gallery)
    assert required.exit_code == 2 and "requires a purpose" in " ".join(required.stderr.split())
    assert run("policy", "set", "require_purpose", "false", "-g", gallery).exit_code == 0
    result = run("match", photo, "-g", gallery, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["faces"][0]["subject"] == "alice"
    verified = run("verify", "alice", photo, "-g", gallery, "--json")
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["match"] is True
