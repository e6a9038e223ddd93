"""CLI tables at 80 columns (issue 24, item 18): no header word and no short word (a date, a
count, a state, a role) is split while they can fit; rich's own narrowing split them evenly
("Jurisdictio n", "2026-1 2-04")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consentmatch import Consent, Gallery
from consentmatch.cli import app

from .conftest import FakeEncoder, fake_photo

runner = CliRunner()
NARROW = {"COLUMNS": "80"}


@pytest.fixture
def office(tmp_path: Path) -> Path:
    path = tmp_path / "office.db"
    with Gallery(path, encoder=FakeEncoder()) as gallery:
        gallery.enroll("kit_harington", [fake_photo(tmp_path, "a.png", (10, 0))],
                       Consent("FORM-17", ["visitor-check-in", "staff-access"], jurisdiction="US-IL",
                               evidence_sha256="a" * 64))
        gallery.enroll("obama", [fake_photo(tmp_path, "b.png", (50, 0))], Consent("REL-2026-0004", ["visitor-check-in"]))
        gallery.create_api_key("desk-3", roles=["operator"], purposes=["visitor-check-in"], rate_limit=120)
        gallery.create_api_key("lt.jones", roles=["approver", "auditor"])
    return path


@pytest.mark.parametrize("command, words", [
    (["subjects"], ["Subject", "Templates", "Active", "purposes", "Consent", "Expires", "Jurisdiction", "US-IL", "obama",
                    "FORM-17", "kit_harington", "visitor-check-in", "REL-2026-0004"]),
    # nine columns cannot stand side by side in 80 without cutting words: one record per row
    (["consent", "list"], ["Reference", "Subject", "Purposes", "Granted", "Expires", "Jurisdiction", "Signer",
                           "Evidence", "State", "FORM-17", "REL-2026-0004", "kit_harington", "visitor-check-in"]),
    (["apikey", "list"], ["Name", "Roles", "Purposes", "Rate/min", "Expires", "Revoked", "operator", "approver,",
                          "auditor", "desk-3", "lt.jones", "120", "(policy)", "visitor-check-in"]),
    (["retention"], ["Subject", "Templates", "Destroy", "Rule", "State", "kit_harington", "obama"]),
    (["purpose", "list"], ["Purpose", "Active", "consents", "Declared", "visitor-check-in", "staff-access"]),
])
def test_no_header_or_short_word_is_split_at_80_columns(office: Path, command: list[str], words: list[str]) -> None:
    result = runner.invoke(app, [*command, "-g", str(office)], env=NARROW)
    assert result.exit_code == 0, result.output
    assert max(map(len, result.stdout.splitlines())) <= 80
    found = set(re.sub(r"[│┃┏┓┗┛┡┩└┘━─┳┻╇╈┼]", " ", result.stdout).split())  # a table's cells or a record's lines
    assert set(words) <= found, (sorted(set(words) - found), result.stdout)
    dates = re.findall(r"\d{4}-\d{2}-\d{2}|\d{4}-\d{0,1}$", result.stdout, re.M)
    assert all(len(d) == 10 for d in dates), result.stdout  # no date cut in two
