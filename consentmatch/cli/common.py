"""What every command shares: the Typer app, the console, the common options, and the one
mapping of library errors to one line on stderr and an exit code (1, or 2 for a bad value)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer

from ..errors import ConsentMatchError, InvalidArgumentError
from ..settings import Settings
from ..text import shown as _shown
from ..text import visible

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from ..consent import Consent
    from ..gallery import Gallery
    from ..results import Erasure, SearchRequest

app = typer.Typer(
    name="consentmatch",
    help="Consent-based face matching: a gallery that holds only faces enrolled with a recorded consent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # never a traceback with locals (they could hold a probe)
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)



def _version(value: bool) -> None:
    if value:
        from .. import __version__

        choice = settings().encoder or "auto (onnx, else dlib)"
        print(f"consentmatch {__version__} (encoder: {choice})")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and the encoder, then exit.")
    ] = False,
) -> None:
    """Consent-based face matching: a gallery that holds only faces enrolled with a recorded consent."""


class _Stdout:
    """stdout's rich Console, made at each print (tables.stdout_console): `import consentmatch.cli`,
    run at every start (--version, --json), does not load rich (~40 ms). A Console made at the
    print reads the terminal's settings (COLUMNS, NO_COLOR) then, as one made at import would in
    a one-command process; kept, one made under a test's COLUMNS would keep that width."""

    def console(self) -> Console:
        from .tables import stdout_console

        return stdout_console()

    def print(self, *objects: Any, **kwargs: Any) -> None:
        self.console().print(*objects, **kwargs)


out = _Stdout()

GalleryOption = Annotated[
    str,
    typer.Option(
        "--gallery",
        "-g",
        envvar="CONSENTMATCH_GALLERY",
        help="The gallery file (SQLite), or a postgresql:// URL (many machines); created by the first enrollment.",
        show_envvar=True,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output: JSON (Lines for lists).")]
PurposeOption = Annotated[
    Optional[str],
    typer.Option(
        "--purpose",
        "-p",
        help="Search only subjects whose active consent lists this purpose (required unless the policy's "
        "require_purpose is false).",
    ),
]
QualityOption = Annotated[
    Optional[str],
    typer.Option(
        "--quality",
        help="Quality bar for enrollment photos: off, low, medium or high (default: the gallery policy's, medium).",
        show_default=False,
    ),
]
DuplicateOption = Annotated[
    bool,
    typer.Option("--allow-duplicate", help="Enroll even when a face matches another enrolled subject (twins)."),
]
ActorOption = Annotated[
    Optional[str],
    typer.Option(
        "--actor",
        envvar="CONSENTMATCH_ACTOR",
        help="Who is calling, for the audit trail (default: `local:<OS user>`).",
        show_envvar=True,
    ),
]
MinFaceOption = Annotated[
    int,
    typer.Option(
        "--min-face-px", min=1, max=10_000,
        help="Narrowest face looked for, in the photo's pixels (face_recognition's reach: 40). "
        "Larger is faster when faces are always larger (a door camera: 80 halves the work on big photos).",
    ),
]
def _detector_name(value: str | None) -> str | None:
    from ..vision.types import DETECTORS

    if value is not None and value.strip().lower() not in DETECTORS:
        raise typer.BadParameter(f"{visible(value)!r} is not a detector: use {' or '.join(DETECTORS)}.")
    return value.strip().lower() if value is not None else None


DetectorOption = Annotated[
    Optional[str],
    typer.Option(
        "--detector",
        help="Face detector: yunet (libfacedetection's CNN, 6-8x cheaper; Linux x86-64) or hog (dlib's, "
        "face_recognition's own). Default: CONSENTMATCH_DETECTOR, else yunet where it runs, else hog.",
        callback=_detector_name,
        show_default=False,
    ),
]
ToleranceOption = Annotated[
    Optional[float],
    typer.Option(
        "--tolerance",
        "-t",
        min=0.0,
        max=2.0,
        help="Largest Euclidean distance counted as the same person; lower is stricter. "
        "Default: the gallery policy's (0.6).",
        show_default=False,
    ),
]


def error(message: str) -> None:
    """One line on stderr: no wrapping, no markup, no traceback, no raw control character."""
    print(f"error: {visible(' '.join(message.split()))}", file=sys.stderr, flush=True)


@contextmanager
def key_notice(g: Gallery, as_json: bool) -> Iterator[None]:
    """Say once, on stderr, where a call created the gallery key (silent with --json): losing
    it loses the gallery, so it must be backed up apart from it. Said even if the call then fails."""
    try:
        yield
    finally:
        if g.created_key_file is not None and not as_json:
            print(f"note: created the gallery key {visible(str(g.created_key_file))}: back it up apart from the gallery; "
                  "without it the gallery cannot be read.", file=sys.stderr, flush=True)


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A transient bar on stderr for a long job, yielding the callback that advances it. Off a
    terminal (a script, a pipe) nothing is drawn and rich.progress is not even loaded."""
    if not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def fail(message: str, code: int = 1) -> NoReturn:
    error(message)
    raise typer.Exit(code)


@contextmanager
def mapped_errors() -> Iterator[None]:
    """Library errors -> one line and exit 1; bad argument values -> exit 2, as usage errors."""
    try:
        yield
    except InvalidArgumentError as exc:
        fail(str(exc), 2)
    except ConsentMatchError as exc:
        fail(str(exc), 1)


def settings(detector: str | None = None) -> Settings:
    """The environment's settings: read here, at the CLI's entry, and passed down from here.

    `detector` is the command's --detector, which wins over CONSENTMATCH_DETECTOR.
    """
    return Settings.from_env().replace(detector=detector)


def gallery_at(path: str | Path, actor: str | None = None, detector: str | None = None, *,
               existing: bool = False, photos: bool = False) -> Gallery:
    """The gallery at `path`. `existing`: the verb reads, changes or serves what is there, so a
    gallery that does not exist is an error (a mistyped path), never an empty gallery; only the
    verbs that create (enroll, import, consent grant, purpose add, policy set, optout add, apikey
    create) make a new one. `photos`: the verb reads photos, so the face models start loading
    now (`vision.preload`), while the gallery is imported and opened."""
    chosen = settings(detector)
    if photos:
        from ..vision import preload

        preload(chosen)
    from ..gallery import Gallery

    return Gallery(path, actor=actor, settings=chosen, existing=existing)


@contextmanager
def open_gallery(path: str | Path, actor: str | None = None, detector: str | None = None, *,
                 existing: bool = False, photos: bool = False, as_json: bool = False) -> Iterator[Gallery]:
    """`gallery_at` for one command, closed after it; a verb that creates the gallery says where
    it created the gallery key (`key_notice`), whichever verb it is."""
    with gallery_at(path, actor, detector, existing=existing, photos=photos) as g, key_notice(g, as_json):
        yield g


def table(*columns: str, title: str | None = None) -> Table:
    """A table whose cells fold instead of ending in "…" (tables.table): rich loads here, at the
    first table, not at every start."""
    from .tables import table as grid

    return grid(*columns, title=title)


def print_json_lines(results: Iterable[Any]) -> None:
    """A listing as JSON Lines: each result's `to_dict()`, one per line."""
    for result in results:
        print_json(result.to_dict())


def print_requests(requests: list[SearchRequest], as_json: bool) -> None:
    """Search requests held for approval: a table, or JSON Lines."""
    if as_json:
        print_json_lines(requests)
        return
    grid = table("Request", "Status", "Kind", "Purpose", "Requester", "Case", "Reason", "Expires")
    for r in requests:
        grid.add_row(r.request_id, r.status, r.kind, r.purpose, _shown(r.requester), _shown(r.case_ref),
                     _shown(r.reason), day(r.expires_at))
    out.print(grid)


def print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False), flush=True)


def day(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d}" if moment else "-"


def consent_from(
    reference: str,
    purposes: list[str] | None,
    expires: str | None,
    jurisdiction: str | None,
    signer: str,
    evidence: Path | None,
    notice_version: str | None,
) -> Consent:
    from ..consent import Consent, evidence_digest, parse_expiry

    return Consent(
        reference=reference,
        purposes=tuple(purposes or ()),
        expires_at=parse_expiry(expires) if expires else None,
        jurisdiction=jurisdiction,
        signer=signer,
        evidence_sha256=evidence_digest(evidence) if evidence else None,
        notice_version=notice_version,
    )


def print_erasure(receipt: Erasure) -> None:
    """A receipt in plain words: a zero is said as what it means (nothing left to delete, a
    record kept as a tombstone, no index loaded in this process), not as a count that reads
    like a failure."""
    templates = f"{receipt.templates_removed} template(s) deleted" if receipt.templates_removed else "no template left to delete"
    consents = (
        f"{receipt.consents_removed} consent record(s) deleted"
        if receipt.consents_removed
        else "consent records kept as non-biometric tombstones"
    )
    if receipt.index_entries_removed or not receipt.templates_removed:
        index = f"{receipt.index_entries_removed} search index entries removed" if receipt.index_entries_removed else ""
    else:
        index = "the search index is rebuilt from the store at the next search"
    check = "post-check passed: none of them can be found" if receipt.verified else "[red]POST-CHECK FAILED[/red]"
    done = ", ".join(part for part in (templates, consents, index) if part)
    out.print(f"Erased '{_shown(receipt.subject)}' ({_shown(receipt.reason)}): {done}; {check}.")


def confirm(yes: bool, question: str, refused: str = "Nothing erased (not confirmed): pass --yes to erase without asking.") -> None:
    try:
        confirmed = yes or typer.confirm(question, err=True)
    except typer.Abort:  # no answer (stdin closed, Ctrl-C)
        confirmed = False
    if not confirmed:
        fail(refused)
