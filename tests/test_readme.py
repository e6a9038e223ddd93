"""Docs that run: every shell and Python example of README.md, and every `**Example:**` that
`consentmatch COMMAND --help` shows, is executed on the example photos; each must exit 0 and
print what it shows.

The rules, so a new example knows what happens to it:
- README fences: ```sh (or bash) and ```python are examples and run; ```text (synopses with
  [OPTIONS]), ```json and ```csv are data and do not. A fence without a language fails here.
- Each README block runs on its own, in a fresh folder where `examples/` is the checkout's
  examples folder (a reader copies one block, not the page). The venv's bin is first on PATH,
  so `consentmatch` is this checkout's command (as `uv tool install .` would make it), and
  `uv run consentmatch` / `uv run python` are read as `consentmatch` / `python`.
- Lines that run the test suite or the type checker on the checkout, or install something
  (SKIPPED), are not run: the suite would recurse, and installing is not a test's business.
- The --help examples run in one order (HELP_ORDER: grant and enroll before match, forget
  last) on scratch galleries, with the files they name (alice1.jpg, form17.pdf...) copied
  from the example photos (HELP_FILES). Each command's output is checked (HELP_EXPECTED).
Every process loads the real models (~0.5 s), so the runs happen once per module.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import EXAMPLES, ROOT

README = ROOT / "README.md"
BIN = Path(sys.executable).parent
SKIPPED = re.compile(r"^(?:\w+=\S*\s+)*(?:uv run (?:pytest|mypy)|\.ci/run|pip install|pipx install|uv tool install|uv sync)\b")
RUN_LANGUAGES = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python"}
DATA_LANGUAGES = {"text", "json", "csv"}
WORKERS = 2  # processes at once: each is mostly one core of model work


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"README.md:{self.line}"


def readme_blocks() -> list[Block]:
    """Every fenced block of the README (indented ones in lists included), with its first line."""
    blocks = []
    lines = README.read_text(encoding="utf-8").splitlines()
    number = 0
    while number < len(lines):
        opening = re.fullmatch(r"(\s*)```(\w*)\s*", lines[number])
        if opening:
            indent, language = opening.groups()
            end = next(i for i in range(number + 1, len(lines)) if lines[i].strip() == "```")
            code = "\n".join(line[len(indent):] for line in lines[number + 1 : end])
            blocks.append(Block(number + 1, language, code + "\n"))
            number = end
        number += 1
    return blocks


def shell_lines(code: str) -> list[str]:
    """The block's commands, continuation lines joined; what SKIPPED names left out."""
    joined = re.sub(r"\s*\\\n\s*", " ", code)
    return [line for line in joined.splitlines() if line.strip() and not SKIPPED.match(line.strip())]


def as_checkout_command(line: str) -> str:
    return line.replace("uv run consentmatch", "consentmatch").replace("uv run python", "python")


def environment() -> dict[str, str]:
    """The test session's keys and model cache, this venv's command first on PATH, and the
    default quality bar (the suite's fake photos turn it off; a reader's gallery has it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CONSENTMATCH_QUALITY", "CONSENTMATCH_GALLERY")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "200"  # tables as on a wide terminal, so a checked name is never folded
    return env


def run_shell(script: str, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script], cwd=folder, env=environment(), capture_output=True, text=True,
        timeout=300,
    )


def fresh_folder(parent: Path, name: str) -> Path:
    folder = parent / name
    folder.mkdir()
    (folder / "examples").symlink_to(EXAMPLES)
    return folder


# -- the README --------------------------------------------------------------------------------

BLOCKS = readme_blocks()
RUN_BLOCKS = [b for b in BLOCKS if b.language in RUN_LANGUAGES]

# What each block must print, by a phrase of the block: a block missing here fails.
README_EXPECTED = {
    "consentmatch demo": ["1. Enroll with consent", "hash chain intact", "Done: the throwaway gallery is deleted."],
    "consentmatch --version": ["consentmatch ", "(encoder: "],
    "consentmatch consent grant obama": [
        "Enrolled 'obama': 2 template(s) added",
        "Enrolled 'biden': 1 template(s) added",
        "MATCH: 'examples/probes/obama1.jpg' vs 'obama'",
        "Erased 'obama' (forget)",
    ],
    'Consent("REL-2026-0002"': [" biden 0."],
    "consentmatch serve -g office.db": ['"subject":"obama"', '"match":true', '"status":"approved"',
                                        '"decided_by":"lt.jones"'],
    "uv run pytest          #": [],  # Development: every line is the checkout's own tooling (SKIPPED)
    "consentmatch copy desk.db": ["audit chain verified at both ends", "Erased 'obama' (forget)"],
    'Gallery("postgresql://': ["subject(s)"],
    "--groups cohorts.csv": ["By cohort at tolerance 0.6", "FMR differential by cohort", "Plot per group written to cohorts.png"],
}

#: The database the "Many machines" examples name: each block that names it gets a new empty
#: database of the session's PostgreSQL cluster instead (tests/pg.py), or is skipped without one.
PG_EXAMPLE_URL = "postgresql://consentmatch@db.internal/visitors"


def expected_for(block: Block) -> list[str]:
    found = [value for phrase, value in README_EXPECTED.items() if phrase in block.code]
    assert len(found) == 1, f"{block.id}: say in README_EXPECTED what this block must print"
    return found[0]


@pytest.fixture(scope="module")
def readme_runs(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> dict[int, subprocess.CompletedProcess[str] | str | None]:
    """Every README example run once: by block line, None where every line is SKIPPED, the reason
    where it needs a PostgreSQL server and none can start."""
    parent = tmp_path_factory.mktemp("readme")
    cluster, no_cluster = None, ""
    if any(PG_EXAMPLE_URL in b.code for b in RUN_BLOCKS):
        try:
            cluster = request.getfixturevalue("pg_cluster")
        except pytest.skip.Exception as exc:
            no_cluster = str(exc)
    urls = {b.line: cluster.new_database() for b in RUN_BLOCKS if cluster and PG_EXAMPLE_URL in b.code}

    def run(block: Block) -> subprocess.CompletedProcess[str] | str | None:
        folder = fresh_folder(parent, f"block{block.line}")
        if PG_EXAMPLE_URL in block.code:
            if block.line not in urls:
                return no_cluster
            quoted = urls[block.line] if block.language == "python" else f"'{urls[block.line]}'"
            block = Block(block.line, block.language, block.code.replace(PG_EXAMPLE_URL, quoted))
        if block.language == "python":
            (folder / "example.py").write_text(block.code, encoding="utf-8")
            return subprocess.run(
                [sys.executable, "example.py"], cwd=folder, env=environment(), capture_output=True, text=True, timeout=300
            )
        lines = [as_checkout_command(line) for line in shell_lines(block.code)]
        return run_shell("\n".join(lines), folder) if lines else None

    with ThreadPoolExecutor(WORKERS) as pool:  # the blocks are independent: two at once
        return dict(zip([b.line for b in RUN_BLOCKS], pool.map(run, RUN_BLOCKS)))


def test_every_readme_block_says_what_it_is() -> None:
    unmarked = [b.id for b in BLOCKS if b.language not in RUN_LANGUAGES and b.language not in DATA_LANGUAGES]
    assert not unmarked, f"mark these fences ```sh, ```python or ```text: {unmarked}"
    assert len(RUN_BLOCKS) >= 4


def test_the_readme_says_how_to_install_the_command() -> None:
    text = README.read_text(encoding="utf-8")
    assert "uv tool install --compile-bytecode ." in text and "pipx install ." in text
    assert "use the installed `consentmatch`" in text


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda b: b.id)
def test_readme_example_runs(block: Block, readme_runs: dict[int, subprocess.CompletedProcess[str] | str | None]) -> None:
    expected = expected_for(block)
    run = readme_runs[block.line]
    if isinstance(run, str):
        pytest.skip(run)
    if run is None:
        assert expected == [], f"{block.id}: every line is SKIPPED; expect nothing of it"
        return
    assert run.returncode == 0, f"{block.id} failed:\n{run.stdout}\n{run.stderr}"
    assert "Traceback" not in run.stderr
    for phrase in expected:
        assert phrase in run.stdout, f"{block.id}: {phrase!r} not in\n{run.stdout}"


def test_the_skip_rule_leaves_out_only_tooling_and_installs() -> None:
    assert shell_lines("uv run pytest -q\npip install uv\n.ci/run\nCONSENTMATCH_ENCODER=dlib uv run pytest\n") == []
    assert shell_lines("uv run consentmatch demo\nconsentmatch enroll a \\\n    b.jpg\n") == [
        "uv run consentmatch demo",
        "consentmatch enroll a b.jpg",
    ]


# -- the --help examples -----------------------------------------------------------------------

CLI_SOURCES = sorted((ROOT / "consentmatch" / "cli").glob("*.py"))
HELP_EXAMPLES = [
    example
    for source in CLI_SOURCES
    for example in re.findall(r"\*\*Example:\*\* `([^`]+)`", source.read_text(encoding="utf-8"))
]
GROUPS = {"consent", "policy", "optout", "key", "purpose", "apikey", "request"}

# The files the examples name, as copies of the example photos.
HELP_FILES = {
    "alice1.jpg": "people/obama/obama.jpg",
    "alice2.jpg": "people/obama/obama2.jpg",
    "selfie.jpg": "probes/obama1.jpg",
    "door1.jpg": "probes/obama_and_biden.jpg",
    "door2.jpg": "probes/two_people.jpg",
    "form17.pdf": "releases/REL-2026-0004.txt",
}
PAIRS = [
    ("people/obama/obama.jpg", "people/obama/obama2.jpg", "yes"),
    ("people/biden/biden.jpg", "people/biden/biden2.jpg", "yes"),
    ("people/obama/obama.jpg", "people/biden/biden.jpg", "no"),
    ("people/obama/obama2.jpg", "people/biden/biden2.jpg", "no"),
]

# (folder, command): the order that works, a folder per gallery (the folders run two at once).
# "desk" is one gallery through its life: consent, enrollment, searches, records, erasure last;
# "office" its policy, opt-outs, keys and audit; "bank" holds alice for transfer-check before
# its verify; "import" starts empty; "lab" has no gallery.
HELP_ORDER = [
    ("desk", "consent grant"),
    ("desk", "enroll"),
    ("desk", "match"),
    ("desk", "copy"),
    ("desk", "apikey create"),
    ("desk", "request list"),
    ("desk", "subjects"),
    ("desk", "consent show"),
    ("desk", "consent list"),
    ("desk", "retention"),
    ("desk", "purge"),
    ("desk", "export"),
    ("desk", "consent revoke"),
    ("desk", "forget"),
    ("office", "key generate"),
    ("office", "purpose add"),
    ("office", "purpose list"),
    ("office", "purpose remove"),
    ("office", "policy set"),
    ("office", "policy show"),
    ("office", "optout add"),
    ("office", "optout list"),
    ("office", "optout remove"),
    ("office", "key info"),
    ("office", "key rotate"),
    ("office", "audit"),
    ("bank", "verify"),
    ("import", "import"),
    ("lab", "evaluate"),
    ("lab", "calibrate"),
    ("lab", "demo"),
]
SETUP = {"bank": "consentmatch enroll alice alice1.jpg alice2.jpg -g customers.db --consent-ref BANK-1 --purpose transfer-check"}
AFTER = {"key generate": 'echo "key of ${#CONSENTMATCH_KEY} hex digits"'}
HELP_EXPECTED = {
    "key generate": ["key of 64 hex digits"],
    "consent grant": ["FORM-17", "US-IL", "active"],
    "enroll": ["Enrolled 'alice': 2 template(s) added"],
    "match": ['"subject": "alice"', '"image": "door2.jpg"'],
    "apikey create": ["API key 'desk-3' (operator; purposes: visitor-check-in", "cm_"],
    "request list": ["Request", "Status"],
    "subjects": ['"subject": "alice"', '"templates": 2'],
    "consent show": ['"reference": "FORM-17"'],
    "consent list": ["FORM-17"],
    "policy show": ["require_purpose = true", "excluded_regions = US-IL,US-TX"],
    "policy set": ["excluded_regions = US-IL,US-TX"],
    "retention": ['"subject": "alice"'],
    "purge": ["Nothing is due"],
    "optout add": ["Opt-out recorded."],
    "optout list": ["email"],
    "optout remove": ["No such opt-out."],
    "audit": ['"action": "key-rotate"'],
    "purpose add": ["visitor-check-in"],
    "purpose list": ["visitor-check-in"],
    "purpose remove": ["visitor-check-in"],
    "export": ["Wrote alice-dsar.json."],
    "key info": ["data keys in"],
    "key rotate": ["Rotated the gallery key"],
    "consent revoke": ["Erased 'alice' (revoke): 2 template(s) deleted"],
    "forget": ["Erased 'alice' (forget)"],
    "evaluate": ['"pairs": 4', '"accuracy": 1.0'],
    "calibrate": ['"tolerance": '],
    "verify": ['"match": true'],
    "import": ["Imported 9 of 9 row(s): 5 subject(s) enrolled, 0 row(s) rejected."],
    "demo": ["Done: the throwaway gallery is deleted."],
    "copy": ["Copied 'visitors.db' to 'visitors-copy.db'", "audit chain verified at both ends"],
}


def command_of(example: str) -> str:
    """`consent grant` of `consentmatch consent grant alice ...`: the words that name the command."""
    words = re.findall(r"[^\s()]+", example.split("consentmatch ", 1)[1])
    return " ".join(words[:2]) if words[0] in GROUPS else words[0]


def test_every_help_example_has_its_place() -> None:
    commands = [command_of(e) for e in HELP_EXAMPLES]
    assert len(commands) == len(set(commands)), "one example per command"
    assert sorted(commands) == sorted(c for _, c in HELP_ORDER), "put each --help example in HELP_ORDER"
    assert set(HELP_EXPECTED) == set(commands)


@pytest.fixture(scope="module")
def help_runs(
    tmp_path_factory: pytest.TempPathFactory, readme_runs: dict[int, subprocess.CompletedProcess[str] | None]
) -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """Every --help example run once, in HELP_ORDER; one that is a whole README block (the
    demo, ~10 s) is that block's run."""
    parent = tmp_path_factory.mktemp("help")
    as_readme = {
        "\n".join(as_checkout_command(line) for line in shell_lines(block.code)): readme_runs[block.line]
        for block in RUN_BLOCKS
        if block.language == "sh"
    }
    by_command = {command_of(e): e for e in HELP_EXAMPLES}

    def run_place(place: str) -> dict[str, subprocess.CompletedProcess[str]]:
        """The examples of one folder, in their order."""
        folder = fresh_folder(parent, place)
        for name, source in HELP_FILES.items():
            (folder / name).write_bytes((EXAMPLES / source).read_bytes())
        (folder / "pairs.csv").write_text(
            "file_x,file_y,same\n" + "".join(f"{EXAMPLES / x},{EXAMPLES / y},{same}\n" for x, y, same in PAIRS)
        )
        if place in SETUP:
            setup = run_shell(SETUP[place], folder)
            assert setup.returncode == 0, setup.stderr
        runs = {}
        for command in [c for p, c in HELP_ORDER if p == place]:
            script = by_command[command] + ("\n" + AFTER[command] if command in AFTER else "")
            same = as_readme.get(script)
            runs[command] = same if same is not None else run_shell(script, folder)
        return runs

    places = list(dict.fromkeys(p for p, _ in HELP_ORDER))
    with ThreadPoolExecutor(WORKERS) as pool:  # the folders are independent: two at once
        yield {command: run for runs in pool.map(run_place, places) for command, run in runs.items()}


@pytest.mark.parametrize("example", HELP_EXAMPLES, ids=command_of)
def test_help_example_runs(example: str, help_runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    run = help_runs[command_of(example)]
    assert run.returncode == 0, f"{example}\n{run.stdout}\n{run.stderr}"
    assert "Traceback" not in run.stderr
    for phrase in HELP_EXPECTED[command_of(example)]:
        assert phrase in run.stdout, f"{example}: {phrase!r} not in\n{run.stdout}"
