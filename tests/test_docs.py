"""Docs that are generated from code stay in step with it."""

from __future__ import annotations

from pathlib import Path

from consentmatch.policy import POLICY, policy_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_policy_table_is_the_declared_one() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("-->\n", text.index("<!-- policy-table")) + len("-->\n")
    end = text.index("\n<!-- /policy-table -->")
    assert text[start:end] == policy_table()
    assert all(f"`{key.name}`" in text[start:end] for key in POLICY)


def test_the_readme_settings_table_is_the_declared_one() -> None:
    from consentmatch.settings import SETTINGS

    text = README.read_text(encoding="utf-8")
    start = text.index("-->\n", text.index("<!-- settings-table")) + len("-->\n")
    end = text.index("\n<!-- /settings-table -->")
    assert text[start:end].splitlines()[2:] == [f"| `{s.env}` | {s.help} |" for s in SETTINGS]
