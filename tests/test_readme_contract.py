"""The README's contract stays the code's (issue 24, item 18): every CLI command is in "The CLI
contract", the HTTP status table is generated from service/problems.py, and the storage table's
policy row lists no subset of the policy keys."""

from __future__ import annotations

import re
from pathlib import Path

from consentmatch.cli import app
from consentmatch.policy import POLICY
from consentmatch.service import app as service_app
from consentmatch.service.problems import HTTP_PROBLEMS, status_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _commands() -> set[str]:
    names = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    for group in app.registered_groups:
        names |= {f"{group.name} {c.name}" for c in group.typer_instance.registered_commands}
    return names


def _contract_commands() -> set[str]:
    """The commands "The CLI contract" block names: `consentmatch a b ... | b c ... | x|y ...`."""
    section = README[README.index("## The CLI contract"):]
    start = section.index("```text\n") + len("```text\n")
    block = section[start:section.index("\n```", start)]
    groups = {name.split()[0] for name in _commands() if " " in name}
    found: set[str] = set()
    for line in block.splitlines():
        for part in line.removeprefix("consentmatch ").split(" | "):
            words = part.split()
            if words[0].startswith("-"):  # an alternative of options: `(--subject S | --email E)`
                continue
            if words[0] in groups:
                found |= {f"{words[0]} {verb}" for verb in words[1].split("|")}
            else:
                found.add(words[0])
    return found


def test_every_cli_command_is_in_the_contract() -> None:
    assert _contract_commands() == _commands()


def test_the_readme_status_table_is_the_service_s() -> None:
    start = README.index("-->\n", README.index("<!-- status-table")) + len("-->\n")
    end = README.index("\n<!-- /status-table -->")
    assert README[start:end] == status_table(), "regenerate it: print(problems.status_table())"
    source = Path(service_app.__file__).read_text(encoding="utf-8")  # the HTTP layer's own names are its
    assert all(f'"{name}"' in source for name, _, _ in HTTP_PROBLEMS if name != "HTTPError")


def test_the_storage_table_names_all_policy_keys_or_none() -> None:
    (row,) = [line for line in README.splitlines() if line.startswith("| `policy` |")]
    named = {key.name for key in POLICY if re.search(rf"`{key.name}`", row)}
    assert named in (set(), {key.name for key in POLICY}), row
