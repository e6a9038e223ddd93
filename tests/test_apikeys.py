"""API keys' terms (issue 24, item 13): a key's purposes are declared ones (a typo is refused with
the closest, as `match` does), and `apikey list` shows each key's rate limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consentmatch import Consent, Gallery
from consentmatch.cli import app
from consentmatch.errors import InvalidArgumentError

from .conftest import FakeEncoder, gallery_rows

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


@pytest.fixture
def bank(tmp_path: Path) -> Path:
    path = tmp_path / "bank.db"
    with Gallery(path, encoder=FakeEncoder()) as gallery:
        gallery.grant_consent("alice", Consent("F-1", ["transfer-check"]))
        gallery.set_policy("rate_limit", "90")
    return path


def test_an_undeclared_purpose_is_refused_with_the_closest_declared_one(bank: Path) -> None:
    before = gallery_rows(bank)
    result = runner.invoke(app, ["apikey", "create", "desk-3", "-g", str(bank), "--role", "operator",
                                 "--purpose", "transfer-chek"])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "'transfer-chek' is not a purpose this gallery serves: did you mean 'transfer-check'?" in result.stderr
    assert gallery_rows(bank) == before
    with Gallery(bank, encoder=FakeEncoder()) as gallery:
        with pytest.raises(InvalidArgumentError, match="did you mean"):
            gallery.create_api_key("desk-3", roles=["operator"], purposes=["transfer-check", "transfer-chek"])
        assert gallery.api_keys() == []


def test_a_declared_purpose_is_taken(bank: Path) -> None:
    result = runner.invoke(app, ["apikey", "create", "desk-3", "-g", str(bank), "--role", "operator",
                                 "--purpose", "transfer-check", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["purposes"] == ["transfer-check"]


def test_apikey_list_shows_each_rate_limit(bank: Path) -> None:
    for args in (["desk-3", "--rate-limit", "30"], ["desk-4"]):
        created = runner.invoke(app, ["apikey", "create", *args, "-g", str(bank), "--role", "operator"])
        assert created.exit_code == 0, created.output
    table = runner.invoke(app, ["apikey", "list", "-g", str(bank)], env=WIDE)
    assert table.exit_code == 0, table.output
    assert "Rate/min" in table.stdout
    rows = {line.split("│")[1].strip(): line for line in table.stdout.splitlines() if "desk-" in line}
    assert "│ 30 " in rows["desk-3"] and "│ 90 (policy) " in rows["desk-4"], table.stdout
    listed = [json.loads(line) for line in runner.invoke(app, ["apikey", "list", "-g", str(bank), "--json"]).stdout.splitlines()]
    assert {k["name"]: k["rate_limit"] for k in listed} == {"desk-3": 30, "desk-4": None}


def test_an_empty_list_says_so_instead_of_a_bare_header(tmp_path: Path) -> None:
    """A table of no rows alone reads like a failure (a newcomer's finding): each list says its count."""
    empty = tmp_path / "empty.db"
    with Gallery(empty, encoder=FakeEncoder()) as g:
        g.declare_purpose("door")
    for args, line in ((["optout", "list"], "0 opt-out(s)."), (["apikey", "list"], "0 API key(s)."),
                       (["request", "list"], "0 request(s).")):
        listed = runner.invoke(app, [*args, "-g", str(empty)], env=WIDE)
        assert listed.exit_code == 0 and listed.stdout.rstrip().endswith(line), listed.output
        assert line not in runner.invoke(app, [*args, "-g", str(empty), "--json"]).stdout


def test_a_key_name_cannot_pass_for_an_actor_consentmatch_names_itself(tmp_path: Path) -> None:
    """The audit's actor of a call is its key's name: a key named `local:alice` or
    `service:anonymous` would read as a person at a shell or as a call with no key."""
    with Gallery(tmp_path / "g.db", encoder=FakeEncoder()) as g:
        for name in ("local:alice", "service:anonymous"):
            with pytest.raises(InvalidArgumentError, match="':' marks the actors consentmatch names itself"):
                g.create_api_key(name, roles=["operator"])
        assert g.api_keys() == []
    refused = runner.invoke(app, ["apikey", "create", "local:alice", "--role", "operator", "-g", str(tmp_path / "g.db")])
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
