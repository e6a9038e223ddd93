"""User data in human output is text, never markup or terminal control (issue 12 D).

A subject named `[/oops]` made `enroll` fail after committing, `[/]` broke every table
that listed it, and escape sequences in paths and references reached the terminal raw.
Names, references and notice versions with control, invisible or bidi characters are
refused at input; what is already stored, and paths, are printed with them spelled out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consentmatch import Consent, Gallery
from consentmatch.cli import app
from consentmatch.errors import InvalidArgumentError
from consentmatch.text import check_text, shown, visible

from .conftest import FakeEncoder, fake_photo

runner = CliRunner()
WIDE = {"COLUMNS": "400"}  # one table row per line, whatever the terminal
MARKUP_NAMES = ["[/oops]", "[/]", "[bold]x[/bold]"]


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("consentmatch.vision.default_encoder", lambda settings=None: FakeEncoder())


@pytest.fixture
def markup_gallery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Subjects whose names are Rich markup, enrolled through the Python API (names with `/` as a
    gallery from before they were refused holds them: they must still print as typed)."""
    monkeypatch.setattr("consentmatch.services.consents.check_new_subject", lambda tx, name: None)
    monkeypatch.setattr("consentmatch.services.enrollment.check_new_name", lambda name, what: name)
    path = tmp_path / "g.db"
    with Gallery(path, encoder=FakeEncoder()) as gallery:
        for number, name in enumerate(MARKUP_NAMES):
            photo = fake_photo(tmp_path, f"{number}.png", (10 + 40 * number, 0))
            gallery.enroll(name, [photo], Consent(f"[ref{number}]", ["door"], jurisdiction="US-IL",
                                                  evidence_sha256="a" * 64, notice_version="[v1]"))
    return path


def _ok(*args: str | Path) -> str:
    result = runner.invoke(app, [str(a) for a in args], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    return str(result.stdout)


@pytest.mark.usefixtures("fake_cli")
def test_markup_names_print_as_typed_in_every_table(markup_gallery: Path, tmp_path: Path) -> None:
    for command in (["subjects"], ["consent", "list"], ["audit"], ["retention"]):
        stdout = _ok(*command, "-g", markup_gallery)
        for name in MARKUP_NAMES:
            assert name in stdout, (command, name, stdout)
    assert "[ref0]" in _ok("consent", "list", "-g", markup_gallery)
    probe = fake_photo(tmp_path, "probe.png", (50, 3))  # the second subject's face
    stdout = _ok("match", probe, "-g", markup_gallery, "-p", "door")
    assert "│ [/]" in stdout and "[/] 0." in stdout  # the best subject, and among the nearest candidates
    assert _ok("verify", "[/]", probe, "-g", markup_gallery, "-p", "door").startswith(f"MATCH: '{probe}' vs '[/]'")


@pytest.mark.usefixtures("fake_cli")
def test_enroll_prints_a_markup_name_instead_of_failing_after_the_commit(tmp_path: Path) -> None:
    """Was: "unexpected MarkupError" with the enrollment already committed."""
    gallery = tmp_path / "g.db"
    stdout = _ok("enroll", "[oops][bold]", fake_photo(tmp_path, "a.png", (10, 0)), "-g", gallery, "-c", "[/c]", "-p", "door")
    assert stdout == "Enrolled '[oops][bold]': 1 template(s) added, 1 in all, under consent [/c].\n"
    assert "[oops][bold]" in _ok("forget", "[oops][bold]", "-g", gallery, "--yes")


@pytest.mark.parametrize(
    "bad",
    ["a\x1b[2Jb", "a\x00b", "a\tb", "a\x7fb", "a\x9bb", "a\u202eb", "a\u2066b", "a\u200bb", "a\u200db", "a\u2060b",
     "a\ufeffb", "a\u2028b", "a\u2029b"],
)
def test_control_and_invisible_characters_are_refused_at_input(bad: str, fake_gallery: Gallery, tmp_path: Path) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    with pytest.raises(InvalidArgumentError, match="is not a valid subject name: it holds U\\+") as caught:
        fake_gallery.enroll(bad, [photo], Consent("R1", ["door"]))
    assert visible(bad) in str(caught.value) and bad[1] not in str(caught.value)
    with pytest.raises(InvalidArgumentError, match="not a valid consent reference"):
        Consent(bad, ["door"])
    with pytest.raises(InvalidArgumentError, match="not a valid notice version"):
        Consent("R1", ["door"], notice_version=bad)
    assert fake_gallery.subjects() == []


@pytest.mark.usefixtures("fake_cli")
def test_cli_refuses_an_escape_in_a_name_in_one_escaped_line(tmp_path: Path) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    result = runner.invoke(app, ["enroll", "x\x1b]0;owned\x07", str(photo), "-g", str(tmp_path / "g.db"), "-c", "R1",
                                 "-p", "door"])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "error: 'x\\x1b]0;owned\\x07' is not a valid subject name: it holds U+001B (a control character), which "
        "terminals hide or act on; use visible characters only.\n"
    )
    result = runner.invoke(app, ["consent", "grant", "bob", "-g", str(tmp_path / "g.db"), "--ref", "\x1b[2JR",
                                 "-p", "door"])
    assert result.exit_code == 2 and "\x1b" not in result.output and "'\\x1b[2JR'" in result.stderr


def test_names_are_nfc_normalised(fake_gallery: Gallery, tmp_path: Path) -> None:
    decomposed, composed = "Ame\u0301lie", "Am\u00e9lie"
    fake_gallery.enroll(decomposed, [fake_photo(tmp_path, "a.png", (10, 0))], Consent("Re\u0301f-1", ["door"]))
    assert [s.subject for s in fake_gallery.subjects()] == [composed]
    assert fake_gallery.subjects()[0].consents[0].reference == "R\u00e9f-1"
    assert fake_gallery.forget(composed).templates_removed == 1
    assert check_text("  Zo\u0308e ", "subject name") == "Z\u00f6e"


@pytest.mark.usefixtures("fake_cli")
def test_escapes_and_markup_in_photo_paths_are_shown_escaped(tmp_path: Path) -> None:
    gallery = tmp_path / "g.db"
    evil = fake_photo(tmp_path, "\x1b[2J\x1b]0;x\x07[bold]e.png", (10, 0))
    stdout = _ok("enroll", "alice", evil, "-g", gallery, "-c", "R1", "-p", "door")
    assert "alice" in stdout
    stdout = _ok("match", evil, "-g", gallery, "-p", "door")
    assert "\\x1b[2J\\x1b]0;x\\x07[bold]e.png" in stdout
    missing = tmp_path / "\x1b[31mgone.png"
    result = runner.invoke(app, ["match", str(missing), "-g", str(gallery), "-p", "door"], env=WIDE)
    assert result.exit_code == 1 and "\x1b" not in result.output
    assert result.stderr == f"error: '{tmp_path}/\\x1b[31mgone.png' does not exist: check the path.\n"
    json_out = runner.invoke(app, ["match", str(evil), "-g", str(gallery), "-p", "door", "--json"])
    assert "\x1b" not in json_out.stdout and json.loads(json_out.stdout)["image"] == str(evil)  # JSON escapes it


def test_shown_and_visible() -> None:
    assert visible("plain name, é, 漢字") == "plain name, é, 漢字"
    assert visible("a\x1b[2J\u202eb\x9b\u200b") == "a\\x1b[2J\\u202eb\\x9b\\u200b"
    assert shown("[/]") == "\\[/]" and shown("[bold]x\x1b") == "\\[bold]x\\x1b"
