"""The command's entry points and how it prints: --version, python -m, tables that never cut."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command_name
from typer.testing import CliRunner

from consentmatch import Consent, Gallery, __version__
from consentmatch.cli import app, app_for
from tests.conftest import PURPOSE, FakeEncoder, fake_photo


def test_version_names_the_package_and_the_encoder() -> None:
    result = CliRunner().invoke(app, ["--version"], env={"CONSENTMATCH_ENCODER": "dlib"})
    assert result.exit_code == 0
    assert result.stdout.strip() == f"consentmatch {__version__} (encoder: dlib)"


def test_python_dash_m_runs_the_same_command() -> None:
    done = subprocess.run([sys.executable, "-m", "consentmatch", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith(f"consentmatch {__version__} (encoder: ")


COMMANDS = [info.name or get_command_name(info.callback.__name__) for info in app.registered_commands if info.callback]


@pytest.mark.parametrize("args", [["--help"], ["--no-such-option"], ["--tolerance", "no-number", "x"]],
                         ids=["help", "unknown-option", "bad-value"])
def test_a_command_run_alone_helps_and_fails_as_in_the_whole_app(args: list[str]) -> None:
    """main() builds only the named command (app_for): its help, its usage errors and their
    exit codes must be the whole app's, for every top-level command."""
    assert len(COMMANDS) >= 15 and "match" in COMMANDS
    runner, env = CliRunner(), {"COLUMNS": "100", "CONSENTMATCH_GALLERY": "/nonexistent/g.db"}
    for name in COMMANDS:
        narrow = app_for([name, *args])
        assert narrow is not app and len(narrow.registered_commands) == 1 and not narrow.registered_groups
        whole = runner.invoke(app, [name, *args], prog_name="consentmatch", env=env)
        alone = runner.invoke(narrow, [name, *args], prog_name="consentmatch", env=env)
        assert whole.exit_code in (0, 2), (name, whole.output)
        assert (alone.exit_code, alone.stdout, alone.stderr) == (whole.exit_code, whole.stdout, whole.stderr), name
    assert len(app.registered_commands) == len(COMMANDS)  # the copies left the app whole


def test_version_alone_builds_no_command_and_prints_the_same() -> None:
    narrow = app_for(["--version"])
    assert narrow is not app and not narrow.registered_commands and not narrow.registered_groups
    alone, whole = CliRunner().invoke(narrow, ["--version"]), CliRunner().invoke(app, ["--version"])
    assert (alone.exit_code, alone.stdout, alone.stderr) == (whole.exit_code, whole.stdout, whole.stderr) == (0, whole.stdout, "")


@pytest.mark.parametrize("args", [[], ["--version", "match"], ["--help"], ["consent", "grant"], ["mach"], ["-g", "x", "match"]])
def test_anything_but_a_command_first_runs_the_whole_app(args: list[str]) -> None:
    assert app_for(args) is app


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


def test_the_progress_bar_is_drawn_on_a_terminal_only() -> None:
    """import, evaluate and calibrate share one bar: a pipe gets nothing (and rich.progress is
    not loaded), a terminal gets the bar with its label."""
    code = (
        "import sys; from consentmatch.cli.common import progress_bar\n"
        "with progress_bar('enrolling') as advance:\n    advance(1, 2)\n"
        "print('rich.progress' in sys.modules)"
    )
    piped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert piped.stdout.split() == ["False"] and piped.stderr == ""
    leader, follower = pty.openpty()
    try:
        shown = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=follower, text=True,
                               check=True, timeout=60)
        os.close(follower)
        drawn = b""
        while chunk := _read(leader):
            drawn += chunk
    finally:
        os.close(leader)
    assert shown.stdout.split() == ["True"] and b"enrolling" in drawn and b"1/2" in drawn


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # Linux: EIO once the terminal's other end is closed and drained
        return b""


def test_help_keeps_angle_brackets_that_markdown_would_drop() -> None:
    """Help is rendered as markdown, which drops `<OS user>` as an HTML tag unless it is code."""
    result = CliRunner().invoke(app, ["enroll", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "(default: local:<OS user>)" in result.stdout
