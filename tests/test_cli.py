"""The CLI contract: commands, options, JSON fields and exit codes that scripts rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consentmatch.cli import app

from .conftest import EXAMPLES, FakeEncoder, fake_photo, gallery_rows

runner = CliRunner()


def run(*args: str | Path, env: dict[str, str] | None = None, input: str | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args], env=env, input=input)


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's galleries use the fake encoder."""
    monkeypatch.setattr("consentmatch.vision.default_encoder", lambda settings=None: FakeEncoder())


def _lines(text: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- real models ---------------------------------------------------------------------------


def test_match_json_contract_on_real_photos(real_gallery_path: Path) -> None:
    probes = [EXAMPLES / "probes" / "obama_and_biden.jpg", EXAMPLES / "probes" / "lin-manuel-miranda.png"]
    result = run("match", *probes, "-g", real_gallery_path, "--purpose", "visitor-check-in", "--top-k", "2", "--json")
    assert result.exit_code == 0, result.output
    first, second = _lines(result.stdout)
    assert set(first) == {"image", "faces", "error", "purpose", "tolerance", "at", "image_sha256", "audit_event",
                          "model"} and first["error"] is None  # issue 18 added purpose and tolerance
    assert first["purpose"] == "visitor-check-in" and first["tolerance"] == 0.6
    assert first["image"] == str(probes[0])
    for face in first["faces"]:
        assert set(face) == {"box", "subject", "distance", "candidates", "ambiguous"}  # issue 2's keys, extended
        assert len(face["box"]) == 4 and all(isinstance(v, int) for v in face["box"])
        assert len(face["candidates"]) == 2
        assert all(set(c) == {"subject", "distance"} for c in face["candidates"])
        assert [c["distance"] for c in face["candidates"]] == sorted(c["distance"] for c in face["candidates"])
        if face["subject"] is not None:
            assert face["subject"] == face["candidates"][0]["subject"]
            assert face["distance"] == face["candidates"][0]["distance"] <= 0.6
    assert sorted(f["subject"] or "-" for f in first["faces"]) == ["-", "biden", "obama"]
    (nobody,) = second["faces"]
    assert nobody["subject"] is None and nobody["distance"] is None and nobody["candidates"]


def test_verify_json_contract(real_gallery_path: Path) -> None:
    probe = EXAMPLES / "probes" / "obama1.jpg"
    result = run("verify", "obama", probe, "-g", real_gallery_path, "-p", "visitor-check-in", "--json")
    assert result.exit_code == 0, result.output
    (body,) = _lines(result.stdout)
    assert set(body) == {"subject", "image", "match", "distance", "tolerance", "error",
                         "at", "image_sha256", "audit_event", "model"}  # issue 14 extended it
    assert body["match"] is True and body["distance"] < 0.6 and body["tolerance"] == 0.6
    result = run("verify", "obama", probe, "-g", real_gallery_path, "-p", "visitor-check-in", "-t", "0.2", "--json")
    assert result.exit_code == 0 and _lines(result.stdout)[0]["match"] is False
    two = EXAMPLES / "probes" / "two_people.jpg"
    result = run("verify", "obama", two, "-g", real_gallery_path, "-p", "visitor-check-in", "--json")
    assert result.exit_code == 1
    (body,) = _lines(result.stdout)
    assert body["match"] is False and body["distance"] is None and "2 faces found" in body["error"]
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_import_then_subjects_with_the_env_var(tmp_path: Path) -> None:
    env = {"CONSENTMATCH_GALLERY": str(tmp_path / "g.db")}
    result = run("import", EXAMPLES / "consents.csv", env=env)
    assert result.exit_code == 0, result.output
    assert "Imported 9 of 9 row(s): 5 subject(s) enrolled, 0 row(s) rejected." in result.stdout
    listing = _lines(run("subjects", "--json", env=env).stdout)
    assert [s["subject"] for s in listing] == ["alex_lacamoire", "biden", "kit_harington", "obama", "rose_leslie"]
    assert [s["templates"] for s in listing] == [1, 2, 2, 2, 2]
    assert listing[1]["active_purposes"] == ["staff-access", "visitor-check-in"]


def test_demo_runs_end_to_end() -> None:
    result = run("demo")
    assert result.exit_code == 0, result.output
    for text in ["No consent, no enrollment", "needs a recorded consent", "Forget obama", "Match again"]:
        assert text in result.stdout
    assert "[red]" not in result.stdout
    purpose_bound = result.stdout.split("4. Purpose-bound search")[1].split("5. Forget obama")[0]
    again = result.stdout.split("6. Match again")[1]
    assert purpose_bound.count(" yes ") == 1 and again.count(" yes ") == 5  # steps 4 and 6 are checked too


# -- contract and error paths, with the fake encoder ----------------------------------------


def test_enroll_match_forget_cycle(fake_cli: None, tmp_path: Path) -> None:
    gallery = tmp_path / "g.db"
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    result = run("enroll", "alice", photo, "-g", gallery, "--consent-ref", "R1", "--purpose", "door", "--purpose", "lobby",
                 "--expires", "2099-01-01", "--jurisdiction", "US-CA", "--json")
    assert result.exit_code == 0, result.output
    assert _lines(result.stdout) == [
        {"subject": "alice", "templates_added": 1, "templates_total": 1, "consent_reference": "R1", "photos": [str(photo)],
         "already_enrolled": 0}
    ]
    (body,) = _lines(run("match", photo, "-g", gallery, "-p", "lobby", "--json").stdout)
    assert body["faces"][0]["subject"] == "alice"
    assert "alice" in run("match", photo, "-g", gallery, "-p", "lobby").stdout  # the table
    refused = run("forget", "alice", "-g", gallery, input="n\n")
    assert refused.exit_code == 1 and "Nothing erased" in refused.stderr
    result = run("forget", "alice", "-g", gallery, "--yes", "--json")
    assert result.exit_code == 0
    receipt = _lines(result.stdout)[0]
    assert receipt["templates_removed"] == 1 and receipt["verified"] is True
    (body,) = _lines(run("match", photo, "-g", gallery, "-p", "lobby", "--json").stdout)
    assert body["faces"][0]["subject"] is None and body["faces"][0]["candidates"] == []


def test_match_reports_each_bad_photo_and_processes_the_rest(fake_cli: None, tmp_path: Path) -> None:
    gallery = tmp_path / "g.db"
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    run("enroll", "alice", photo, "-g", gallery, "-c", "R1", "-p", "door")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 garbage")
    result = run("match", tmp_path / "missing.jpg", corrupt, photo, "-g", gallery, "-p", "door", "--json")
    assert result.exit_code == 1
    bodies = _lines(result.stdout)
    assert [b["error"] is None for b in bodies] == [False, False, True]
    assert bodies[2]["faces"][0]["subject"] == "alice"
    errors = result.stderr.splitlines()
    assert len(errors) == 2 and "missing.jpg" in errors[0] and "corrupt.jpg" in errors[1]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["enroll", "bob", "{photo}"], 1, "needs a recorded consent"),
        (["enroll", "bob", "{photo}", "-c", "R9"], 1, "No consent has the reference 'R9'"),  # an existing record
        (["enroll", "bob", "{photo}", "-c", "R9", "--expires", "2030-01-01"], 2, "names no purpose"),
        (["enroll", "bob", "{photo}", "-c", "R9", "-p", "door", "--jurisdiction", "US-IL"], 1, "written release"),
        (["match", "{photo}", "-p", "door", "--tolerance", "0"], 2, "out of range"),
        (["enroll", "bob", "{photo}", "-c", "R9", "-p", "door", "--expires", "soon"], 2, "not a date"),
        (["enroll", "bob", "{photo}", "-c", "R9", "-p", "door", "--jurisdiction", "Illinois"], 2, "ISO 3166"),
        (["enroll", "bob", "{two}", "-c", "R9", "-p", "door"], 1, "2 faces found in"),
        (["enroll", "bob", "{photo}", "-c", "R1", "-p", "door"], 1, "already belongs to subject 'alice'"),
        (["match", "{photo}"], 2, "requires a purpose for every search"),  # the policy decides, not the CLI
        (["match", "{photo}", "-p", "door", "--tolerance", "3"], 2, "Invalid value"),
        (["match", "{photo}", "-p", "bad purpose!"], 2, "not a purpose label"),
        (["match", "{photo}", "-p", "door", "--top-k", "11"], 2, "over this gallery's limit of 10 (policy max_top_k)"),
        (["verify", "alice", "{photo}", "-p", "dor"], 2, "'dor' is not a purpose this gallery serves: did you mean 'door'?"),
        (["forget", "zed", "--yes"], 1, "'zed' is not enrolled"),
        (["import", "{folder}/nope.csv"], 1, "does not exist"),
    ],
)
def test_errors_are_one_line_with_the_right_exit_code(
    fake_cli: None, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    gallery = tmp_path / "g.db"
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    two = fake_photo(tmp_path, "two.png", (20, 0), (30, 0))
    assert run("enroll", "alice", photo, "-g", gallery, "-c", "R1", "-p", "door").exit_code == 0
    assert run("purpose", "add", "payroll", "-g", gallery).exit_code == 0  # declared, alice not consented
    before, rows = gallery.read_bytes(), gallery_rows(gallery)
    filled = [a.format(photo=photo, two=two, folder=tmp_path) for a in args]
    result = run(*filled, "-g", gallery)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    if code == 1:
        assert len(result.stderr.strip().splitlines()) == 1
    if args[0] in ("enroll", "verify") and code == 1:  # a refusal: recorded in the audit trail, nothing else changed
        assert gallery_rows(gallery) == rows
        last = _lines(run("audit", "--json", "-g", gallery).stdout)[-1]
        assert (last["action"], last["subject"], last["details"]["outcome"]) == (args[0], args[1], "refused")
        assert message in last["details"]["reason"]
    else:
        assert gallery.read_bytes() == before  # nothing changed


def test_missing_gallery_is_one_line(fake_cli: None, tmp_path: Path) -> None:
    photo = fake_photo(tmp_path, "a.png", (10, 0))
    for args in (["match", photo, "-p", "door"], ["subjects"], ["forget", "x", "--yes"]):
        result = run(*args, "-g", tmp_path / "nope.db")  # a mistyped path is no empty gallery (issue 24, item 16)
        assert result.exit_code == 1 and "No gallery at" in result.stderr
    assert not (tmp_path / "nope.db").exists()


def test_import_reports_bad_rows_and_exits_1(fake_cli: None, tmp_path: Path) -> None:
    fake_photo(tmp_path, "a.png", (10, 0))
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject,photo,consent_ref,purposes,expires,jurisdiction\nalice,a.png,R1,door,,\nbob,b.png,R2,door,,\n")
    result = run("import", manifest, "-g", tmp_path / "g.db", "--json")
    assert result.exit_code == 1
    (report,) = _lines(result.stdout)
    assert report["enrolled"] == 1 and report["subjects"] == ["alice"]
    assert report["rejected"][0]["row"] == 3 and "does not exist" in report["rejected"][0]["reason"]
    assert "b.png (row 3)" in result.stderr


def test_installed_command_exits_2_on_usage_and_never_prints_a_traceback(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "from consentmatch.cli import main; main()"]
    usage = subprocess.run([*command, "match"], capture_output=True, text=True)
    assert usage.returncode == 2
    corrupt = tmp_path / "x.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff")
    failed = subprocess.run([*command, "match", str(corrupt), "-g", str(tmp_path / "none.db"), "-p", "door"],
                            capture_output=True, text=True)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith("error: ") and failed.stderr.count("\n") == 1
