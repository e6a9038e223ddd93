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


def test_import_twice_stores_nothing_new(fake_gallery: Gallery, manifest: Path) -> None:
    first = fake_gallery.import_manifest(manifest)
    counts = {s.subject: s.templates for s in fake_gallery.subjects()}
    second = fake_gallery.import_manifest(manifest)
    assert first.to_dict()["already_enrolled"] == 0
    assert second.to_dict()["already_enrolled"] == 3 and not second.rejected
    assert {s.subject: s.templates for s in fake_gallery.subjects()} == counts == {"ann": 2, "bob": 1}


def test_enroll_same_photo_again_is_already_enrolled(fake_gallery: Gallery, tmp_path: Path, consent: Consent) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    fake_gallery.enroll("ann", [photo], consent)
    again = fake_gallery.enroll("ann", [photo, fake_photo(tmp_path, "b.png", (10, 4))], consent)
    assert (again.templates_added, again.already_enrolled, again.templates_total) == (1, 1, 2)
    assert again.to_dict()["already_enrolled"] == 1


def test_cli_import_twice_says_already_enrolled(fake_cli: None, manifest: Path, tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    assert run("import", manifest, "-g", db).exit_code == 0
    result = run("import", manifest, "-g", db)
    assert result.exit_code == 0 and "3 row(s) already enrolled" in result.stdout
    report = json.loads(run("import", manifest, "-g", db, "--json").stdout)
    assert report["already_enrolled"] == 3 and report["enrolled"] == 3
