"""The command's entry points and how it prints: --version, python -m, tables that never cut."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from consentmatch import Consent, Gallery, __version__
from consentmatch.cli import app
from tests.conftest import PURPOSE, FakeEncoder, fake_photo


def test_version_names_the_package_and_the_encoder() -> None:
    result = CliRunner().invoke(app, ["--version"], env={"CONSENTMATCH_ENCODER": "dlib"})
    assert result.exit_code == 0
    assert result.stdout.strip() == f"consentmatch {__version__} (encoder: dlib)"


def test_python_dash_m_runs_the_same_command() -> None:
    done = subprocess.run([sys.executable, "-m", "consentmatch", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith(f"consentmatch {__version__} (encoder: ")


def test_tables_fold_long_values_instead_of_cutting_them(tmp_path: Path) -> None:
    gallery = tmp_path / "g.db"
    name = "a-subject-whose-reference-is-much-longer-than-any-column-of-an-80-column-terminal-leaves"
    with Gallery(gallery, encoder=FakeEncoder()) as g:
        g.enroll(name, [fake_photo(tmp_path, "a.png", (10, 0))], Consent("R1", [PURPOSE]))
    result = CliRunner().invoke(app, ["subjects", "-g", str(gallery)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    assert max(map(len, result.stdout.splitlines())) <= 80
    # Six columns beside a word this long cannot all stand whole: one record per row (README, "what the
    # CLI prints"), the value folded over several lines beside its header, whole.
    assert result.stdout.startswith("Subject ")
    assert "".join(result.stdout.split()).startswith("Subject" + name + "Templates")
