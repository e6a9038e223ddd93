"""Every script in examples/ runs to the end (exit 0, no traceback) and says what it shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import EXAMPLES

# What each script must print: a script added to examples/ without an entry here fails.
EXPECTED = {
    "quickstart.py": [
        "refused: Enrolling 'stranger' needs a recorded consent",
        "verify obama: True",
        "Erasure(subject='obama', templates_removed=2",
        "['biden']",
    ],
}


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_script_runs(script: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CONSENTMATCH_QUALITY"}  # the default bar, as a user has it
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert script in EXPECTED, f"say in EXPECTED what examples/{script} must print"
    for line in EXPECTED[script]:
        assert line in run.stdout, (line, run.stdout)
