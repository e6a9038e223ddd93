"""Names a URL cannot carry (issue 24, item 11): a subject or API key named with `/` could never
be reached by `/v1/subjects/{subject}` or `/v1/apikeys/{name}` (a key nobody could revoke over
HTTP). They are refused where they are created; rows stored before the rule stay readable."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from consentmatch import Consent, Gallery
from consentmatch.cli import app
from consentmatch.errors import InvalidArgumentError
from consentmatch.service import create_app

from .conftest import FakeEncoder, fake_photo, gallery_rows

runner = CliRunner()


@pytest.mark.parametrize(("name", "message"), [
    ("a/b", "holds '/', which no URL can carry"), ("/", "holds '/', which no URL can carry"),
    ("ops/desk-3", "holds '/', which no URL can carry"), (".", "no URL can carry"), ("..", "no URL can carry"),
])
def test_a_name_no_url_reaches_is_refused_where_it_is_created(name: str, message: str, fake_gallery: Gallery,
                                                                 tmp_path: Path) -> None:
    """No route reaches a key or subject whose name holds a slash, nor one named "." or "..":
    `/v1/apikeys/..` is `/v1/` to every URL client (WHATWG resolves `%2E%2E` alike; red team)."""
    fake_gallery.grant_consent("someone", Consent("F-0", ["door"]))
    before = gallery_rows(fake_gallery.path)
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    calls = [
        lambda: fake_gallery.create_api_key(name, roles=["operator"]),
        lambda: fake_gallery.grant_consent(name, Consent("F-1", ["door"])),
        lambda: fake_gallery.enroll(name, [photo], Consent("F-2", ["door"])),
    ]
    for call in calls:
        with pytest.raises(InvalidArgumentError, match=message) as caught:
            call()
        assert "\n" not in str(caught.value)
    assert gallery_rows(fake_gallery.path) == before


def test_a_new_gallery_refuses_a_slash_before_any_photo_work(tmp_path: Path) -> None:
    FakeEncoder.calls = 0
    with Gallery(tmp_path / "new.db", encoder=FakeEncoder()) as gallery:
        with pytest.raises(InvalidArgumentError, match="holds '/'"):
            gallery.enroll("a/b", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("F-1", ["door"]))
    assert FakeEncoder.calls == 0 and not (tmp_path / "new.db").exists()


def test_the_cli_refuses_it_in_one_line(tmp_path: Path) -> None:
    gallery = tmp_path / "g.db"
    result = runner.invoke(app, ["apikey", "create", "desk/3", "--role", "operator", "-g", str(gallery)])
    assert result.exit_code == 2, result.output
    assert "holds '/'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = runner.invoke(app, ["consent", "grant", "a/b", "-c", "F-1", "-p", "door", "-g", str(gallery)])
    assert result.exit_code == 2 and "holds '/'" in result.stderr


def test_rows_named_before_the_rule_stay_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gallery written before the rule: its slashed subject is listed, verified and forgotten."""
    path = tmp_path / "old.db"
    with monkeypatch.context() as old:
        old.setattr("consentmatch.services.consents.check_new_subject", lambda tx, name: None)
        old.setattr("consentmatch.services.enrollment.check_new_name", lambda name, what: name)
        with Gallery(path, encoder=FakeEncoder()) as gallery:
            gallery.enroll("a/b", [fake_photo(tmp_path, "a.png", (10, 0))], Consent("F-1", ["door"]))
    with Gallery(path, encoder=FakeEncoder()) as gallery:
        assert [s.subject for s in gallery.subjects()] == ["a/b"]
        assert gallery.verify("a/b", fake_photo(tmp_path, "p.png", (10, 1)), purpose="door").match
        gallery.enroll("a/b", [fake_photo(tmp_path, "b.png", (10, 2))], "F-1")  # more photos under its consent
        assert gallery.forget("a/b").subject == "a/b"


def test_a_consent_reference_or_purpose_with_a_slash_is_reachable_over_http(fake_gallery: Gallery) -> None:
    """References ("2024/17") and purpose labels may hold `/`: their routes take the whole rest of the path."""
    fake_gallery.grant_consent("alice", Consent("2024/17", ["door"]))
    fake_gallery.declare_purpose("ops/door")
    admin = fake_gallery.create_api_key("admin-1", roles=["admin", "enroller"]).key
    with TestClient(create_app(fake_gallery)) as client:
        auth = {"Authorization": f"Bearer {admin}"}
        shown = client.get("/v1/consents/2024/17", headers=auth)
        assert shown.status_code == 200 and shown.json()["reference"] == "2024/17", shown.text
        assert client.delete("/v1/consents/2024/17", headers=auth).status_code == 200
        removed = client.delete("/v1/purposes/ops/door", headers=auth)
        assert removed.status_code == 200 and removed.json() == {"name": "ops/door", "removed": True}, removed.text
