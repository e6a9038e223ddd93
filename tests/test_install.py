"""The README's install command (issue 24, item 17): `uv tool install .` on a fresh machine gets
dlib-bin's wheels, never PyPI's source-only dlib (a 13-minute compile, and both installed): no
runtime dependency may ask for `dlib`, because `uv tool install` and pipx do not apply
[tool.uv]'s override. Both tests use uv and PyPI (or uv's cache)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
UV = shutil.which("uv")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(UV is None, reason="uv is not installed")]


def _install_command() -> str:
    """The README's `uv tool install` line (the section "Install the command")."""
    (line,) = re.findall(r"^(uv tool install \S.*?)\s*(?:#.*)?$", README.read_text(encoding="utf-8"), re.M)
    return line


def test_the_runtime_dependencies_resolve_without_source_dlib(tmp_path: Path) -> None:
    """What any installer sees (no [tool.uv] settings): dlib-bin, and no `dlib` at all."""
    done = subprocess.run([str(UV), "pip", "compile", "--no-config", "--no-header", "-q", str(ROOT / "pyproject.toml"),
                           "-o", str(tmp_path / "resolved.txt")], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    names = [line.split("==")[0].lower() for line in (tmp_path / "resolved.txt").read_text().splitlines()
             if "==" in line]
    assert "dlib-bin" in names and "dlib" not in names


def test_uv_tool_install_builds_no_dlib_and_the_command_runs(tmp_path: Path) -> None:
    command = _install_command()
    assert command.split()[:3] == ["uv", "tool", "install"] and command.split()[-1] == ".", command
    env = {**os.environ, "UV_TOOL_DIR": str(tmp_path / "tools"), "UV_TOOL_BIN_DIR": str(tmp_path / "bin"),
           "UV_PYTHON_DOWNLOADS": "never", "NO_COLOR": "1"}
    done = subprocess.run([str(UV), *command.split()[1:]], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    log = done.stdout + done.stderr
    assert not re.search(r"Build(ing|t) dlib\b", log) and " + dlib==" not in log, log
    (site,) = (tmp_path / "tools" / "consentmatch").glob("lib/python*/site-packages")
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert "dlib_bin" in installed and "dlib" not in installed, sorted(installed)
    version = subprocess.run([str(tmp_path / "bin" / "consentmatch"), "--version"], capture_output=True, text=True,
                             timeout=120, env=env)
    assert version.returncode == 0 and version.stdout.startswith("consentmatch "), version
    python = tmp_path / "tools" / "consentmatch" / "bin" / "python"
    engine = subprocess.run([str(python), "-c", "import dlib; print(dlib.DLIB_USE_CUDA is not None)"],
                            capture_output=True, text=True, timeout=120)
    assert engine.returncode == 0 and engine.stdout.strip() == "True", engine
