"""A mistyped gallery path (issue 24, item 16): the verbs that read, change or serve a gallery
refuse one that does not exist, with its path, in one line; the verbs that create still create."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consentmatch import Consent, Gallery, GalleryNotFoundError
from consentmatch.cli import app

from .conftest import FakeEncoder, fake_photo

runner = CliRunner()


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("consentmatch.vision.default_encoder", lambda settings=None: FakeEncoder())

#: Every verb that reads, changes or serves what is there (arguments after the gallery's name).
READERS = [
    ["subjects"], ["retention"], ["audit"], ["audit", "--verify"], ["export", "alice"], ["forget", "alice", "--yes"],
    ["purge", "--yes"], ["consent", "list"], ["consent", "show", "F-1"], ["consent", "revoke", "F-1", "--yes"],
    ["purpose", "list"], ["purpose", "remove", "door", "--yes"], ["policy", "show"], ["optout", "list"],
    ["optout", "remove", "--subject", "alice"], ["key", "info"], ["key", "rotate"], ["apikey", "list"],
    ["apikey", "revoke", "desk-3"], ["request", "list"], ["request", "show", "req_0"],
    ["request", "approve", "req_0", "--reason", "ok"], ["request", "deny", "req_0", "--reason", "no"],
    ["match", "PHOTO", "-p", "door"], ["verify", "alice", "PHOTO", "-p", "door"],
]


@pytest.mark.parametrize("verb", READERS, ids=" ".join)
def test_a_reading_verb_refuses_a_gallery_that_does_not_exist(verb: list[str], tmp_path: Path) -> None:
    typo = tmp_path / "typo.db"
    photo = str(fake_photo(tmp_path, "p.png", (10, 0)))
    args = [photo if a == "PHOTO" else a for a in verb]
    at = 2 if args[0] in {"consent", "purpose", "policy", "optout", "key", "apikey", "request"} else 1
    result = runner.invoke(app, [*args[:at], "-g", str(typo), *args[at:]])
    assert result.exit_code == 1, (verb, result.output)
    assert result.stderr.startswith("error: No gallery at '") and str(typo) in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not typo.exists() and list(tmp_path.iterdir()) == [tmp_path / "p.png"]


@pytest.mark.usefixtures("fake_cli")
def test_the_verbs_that_create_still_create(tmp_path: Path) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    for name, args in {
        "enroll": ["enroll", "alice", str(photo), "-c", "F-1", "-p", "door"],
        "grant": ["consent", "grant", "alice", "-c", "F-1", "-p", "door"],
        "purpose": ["purpose", "add", "door"], "policy": ["policy", "set", "tolerance", "0.5"],
        "optout": ["optout", "add", "--subject", "bob"],
        "apikey": ["apikey", "create", "desk-3", "--role", "operator"],
    }.items():
        gallery = tmp_path / f"{name}.db"
        at = 1 if args[0] == "enroll" else 2
        result = runner.invoke(app, [*args[:at], "-g", str(gallery), *args[at:]])
        assert result.exit_code == 0, (name, result.output)
        assert gallery.exists(), name


def test_the_library_refuses_it_when_asked(tmp_path: Path) -> None:
    with pytest.raises(GalleryNotFoundError, match="No gallery at"):
        Gallery(tmp_path / "typo.db", encoder=FakeEncoder(), existing=True)
    with Gallery(tmp_path / "g.db", encoder=FakeEncoder()) as gallery:  # by default, the first write creates it
        gallery.grant_consent("alice", Consent("F-1", ["door"]))
    Gallery(tmp_path / "g.db", encoder=FakeEncoder(), existing=True).close()


@pytest.mark.slow
def test_serve_refuses_a_gallery_that_does_not_exist(tmp_path: Path) -> None:
    typo = tmp_path / "typo.db"
    done = subprocess.run([sys.executable, "-m", "consentmatch", "serve", "-g", str(typo), "--port", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done
    assert done.stderr.strip() == f"error: No gallery at '{typo}': enroll someone to create it, or check --gallery / " \
                                  "CONSENTMATCH_GALLERY." and not typo.exists()


def test_an_empty_postgresql_database_is_no_gallery_to_read(pg_url: str) -> None:
    with pytest.raises(GalleryNotFoundError, match="No gallery at") as caught:
        Gallery(pg_url, encoder=FakeEncoder(), existing=True)
    assert "password=" not in str(caught.value) or "password=***" in str(caught.value)
    with Gallery(pg_url, encoder=FakeEncoder()) as gallery:
        gallery.grant_consent("alice", Consent("F-1", ["door"]))
    with Gallery(pg_url, encoder=FakeEncoder(), existing=True) as gallery:
        assert [r.subject for r in gallery.consents()] == ["alice"]
