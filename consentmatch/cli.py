"""The `consentmatch` command: a thin Typer adapter over `Gallery`, one command per verb.

Each command opens the gallery, calls one method, prints a table (or JSON with --json) on
stdout, and turns library errors into one line on stderr. Exit codes: 0 every input was
processed (no match is a result), 1 an input or the gallery failed, 2 a usage error.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import ConsentMatchError, InvalidArgumentError

if TYPE_CHECKING:
    from .gallery import Gallery
    from .results import MatchResult

app = typer.Typer(
    name="consentmatch",
    help="Consent-based face matching: a gallery that holds only faces enrolled with a recorded consent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # never a traceback with locals (they could hold a probe)
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)

out = Console(highlight=False, soft_wrap=True)

GalleryOption = Annotated[
    Path,
    typer.Option(
        "--gallery",
        "-g",
        envvar="CONSENTMATCH_GALLERY",
        help="The gallery file (SQLite); created by the first enrollment.",
        show_envvar=True,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output: JSON (Lines for lists).")]
PurposeOption = Annotated[
    str, typer.Option("--purpose", "-p", help="Search only subjects whose active consent lists this purpose.")
]
ToleranceOption = Annotated[
    float,
    typer.Option(
        "--tolerance",
        "-t",
        min=0.0,
        max=2.0,
        help="Largest Euclidean distance counted as the same person; lower is stricter.",
    ),
]


def _error(message: str) -> None:
    """One line on stderr: no wrapping, no markup, no traceback."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)


def _fail(message: str, code: int = 1) -> NoReturn:
    _error(message)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Library errors -> one line and exit 1; bad argument values -> exit 2, as usage errors."""
    try:
        yield
    except InvalidArgumentError as exc:
        _fail(str(exc), 2)
    except ConsentMatchError as exc:
        _fail(str(exc), 1)


def _gallery(path: Path) -> Gallery:
    from .gallery import Gallery

    return Gallery(path)


def _json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False), flush=True)


def _date(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d}" if moment else "-"


# -- enroll / import -------------------------------------------------------------------------


@app.command()
def enroll(
    subject: Annotated[str, typer.Argument(help="The customer's name or id for the person.")],
    photos: Annotated[
        list[Path], typer.Argument(help="Photos of this person, one face each.", show_default=False)
    ],
    gallery: GalleryOption,
    consent_ref: Annotated[
        Optional[str], typer.Option("--consent-ref", "-c", help="Reference of the person's signed consent (required).")
    ] = None,
    purpose: Annotated[
        Optional[list[str]], typer.Option("--purpose", "-p", help="A purpose the consent covers; repeat for several.")
    ] = None,
    expires: Annotated[
        Optional[str], typer.Option("--expires", help="Consent end date, YYYY-MM-DD (ends 00:00 UTC that day).")
    ] = None,
    jurisdiction: Annotated[
        Optional[str], typer.Option("--jurisdiction", help="ISO 3166 code of the person's residence, e.g. US-IL.")
    ] = None,
    min_face_px: Annotated[int, typer.Option("--min-face-px", min=1, help="Smallest face width accepted.")] = 80,
    as_json: JsonOption = False,
) -> None:
    """Enroll a consenting person from one or more photos, all or nothing.

    Every photo must hold exactly one face, at least 80 px wide. Without --consent-ref the
    enrollment is refused.

    **Example:** `consentmatch enroll alice alice1.jpg alice2.jpg -g visitors.db --consent-ref FORM-17 --purpose visitor-check-in --expires 2027-12-31 --jurisdiction US-IL`
    """
    from .consent import Consent, parse_expiry

    with _errors():
        consent = None
        if consent_ref is not None:
            consent = Consent(
                reference=consent_ref,
                purposes=tuple(purpose or ()),
                expires_at=parse_expiry(expires) if expires else None,
                jurisdiction=jurisdiction,
            )
        with _gallery(gallery) as g:
            result = g.enroll(subject, photos, consent, min_face_px=min_face_px)
    if as_json:
        _json(result.to_dict())
    else:
        out.print(
            f"Enrolled '{result.subject}': {result.templates_added} template(s) added, "
            f"{result.templates_total} in all, under consent {result.consent_reference}."
        )


@app.command("import")
def import_(
    manifest: Annotated[
        Path, typer.Argument(help="CSV: subject,photo,consent_ref,purposes,expires,jurisdiction.")
    ],
    gallery: GalleryOption,
    as_json: JsonOption = False,
) -> None:
    """Bulk enrollment from a manifest CSV; bad rows are reported and skipped.

    Columns: subject,photo,consent_ref,purposes,expires,jurisdiction. Purposes are
    ;-separated, photo paths absolute or relative to the manifest, expires and jurisdiction
    may be empty, and several rows may name one subject. Exit 1 if any row was rejected.

    **Example:** `consentmatch import examples/consents.csv -g visitors.db`
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with _errors(), _gallery(gallery) as g:
        progress = Progress(
            TextColumn("enrolling"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        with progress:
            task = progress.add_task("import", total=None)
            report = g.import_manifest(
                manifest, progress=lambda done, total: progress.update(task, completed=done, total=total)
            )
    for rejection in report.rejected:
        _error(f"{rejection.photo or '-'} (row {rejection.row}): {rejection.reason}")
    if as_json:
        _json(report.to_dict())
    else:
        out.print(
            f"Imported {len(report.enrolled)} of {report.rows} row(s): {len(report.subjects)} subject(s) enrolled, "
            f"{len(report.rejected)} row(s) rejected."
        )
        if report.rejected:
            table = Table("Row", "Subject", "Photo", "Reason", title="Rejected")
            for r in report.rejected:
                table.add_row(str(r.row), r.subject, r.photo, r.reason)
            out.print(table)
    if report.rejected:
        raise typer.Exit(1)


# -- match / verify --------------------------------------------------------------------------


@app.command()
def match(
    photos: Annotated[
        list[Path],
        typer.Argument(help="Probe photos; every face in each is matched.", show_default=False),
    ],
    gallery: GalleryOption,
    purpose: PurposeOption,
    tolerance: ToleranceOption = 0.6,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=1000, help="Nearest subjects listed per face.")] = 5,
    as_json: JsonOption = False,
) -> None:
    """1:N: who is in each photo, among the people consented for the purpose.

    Prints, for every face, its box, the best subject within the tolerance (or none) and the
    top-k nearest subjects. No match is a result (exit 0); an unreadable photo is reported
    on stderr and gives exit 1 after the others are processed.

    **Example:** `consentmatch match door1.jpg door2.jpg -g visitors.db --purpose visitor-check-in --json`
    """
    from .consent import check_purpose

    with _errors():
        check_purpose(purpose)
    results: list[MatchResult] = []
    failed = False
    with _errors(), _gallery(gallery) as g:
        for photo in photos:
            try:
                result = g.match(photo, purpose=purpose, tolerance=tolerance, top_k=top_k)
            except ConsentMatchError as exc:
                if not isinstance(exc, (_input_errors())):
                    raise
                failed = True
                _error(str(exc))
                if as_json:
                    _json({"image": str(photo), "faces": [], "error": str(exc)})
                continue
            if as_json:
                _json(result.to_dict())
            results.append(result)
    if not as_json:
        _print_matches(results)
    if failed:
        raise typer.Exit(1)


def _input_errors() -> tuple[type[ConsentMatchError], ...]:
    """Errors that belong to one input photo; the others stop the whole command."""
    from .errors import FaceError, ImageError

    return (ImageError, FaceError)


def _print_matches(results: list[MatchResult]) -> None:
    table = Table("Image", "Face", "Box (t,r,b,l)", "Subject", "Distance", "Nearest candidates")
    for result in results:
        if not result.faces:
            table.add_row(result.image, "-", "-", "[dim]no face found[/dim]", "-", "-")
        for number, face in enumerate(result.faces, start=1):
            nearest = ", ".join(f"{c.subject} {c.distance:.3f}" for c in face.candidates[:3]) or "-"
            table.add_row(
                result.image,
                str(number),
                ",".join(map(str, face.box.to_list())),
                face.subject or "[dim]no match[/dim]",
                f"{face.distance:.3f}" if face.distance is not None else "-",
                nearest,
            )
    out.print(table)


@app.command()
def verify(
    subject: Annotated[str, typer.Argument(help="The enrolled person to check against.")],
    photo: Annotated[Path, typer.Argument(help="A probe photo holding exactly one face.")],
    gallery: GalleryOption,
    purpose: PurposeOption,
    tolerance: ToleranceOption = 0.6,
    as_json: JsonOption = False,
) -> None:
    """1:1: is the one face in the photo this subject? (e.g. before a large transfer)

    Exit 0 with match true or false; exit 1 when the check could not be made (no consent
    for the purpose, not enrolled, no face or several faces).
    Not authentication on its own: there is no liveness check.

    **Example:** `consentmatch verify alice selfie.jpg -g customers.db --purpose transfer-check --json`
    """
    with _errors(), _gallery(gallery) as g:
        try:
            result = g.verify(subject, photo, purpose=purpose, tolerance=tolerance)
        except ConsentMatchError as exc:
            if as_json and not isinstance(exc, InvalidArgumentError):
                _json(
                    {"subject": subject, "image": str(photo), "match": False, "distance": None,
                     "tolerance": tolerance, "error": str(exc)}
                )
            raise
    if as_json:
        _json(result.to_dict())
    else:
        verdict = "[green]MATCH[/green]" if result.match else "[red]NO MATCH[/red]"
        sign = "<=" if result.match else ">"
        out.print(
            f"{verdict}: '{result.image}' vs '{result.subject}': distance {result.distance:.3f} "
            f"{sign} tolerance {result.tolerance:.2f}"
        )


# -- forget / subjects -----------------------------------------------------------------------


@app.command()
def forget(
    subject: Annotated[str, typer.Argument(help="The person to erase.")],
    gallery: GalleryOption,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Erase a person: templates, consent records and index entries, at once and for good.

    **Example:** `consentmatch forget alice -g visitors.db --yes`
    """
    try:
        confirmed = yes or typer.confirm(f"Erase '{subject}' from {gallery} for good?", err=True)
    except typer.Abort:  # no answer (stdin closed, Ctrl-C)
        confirmed = False
    if not confirmed:
        _fail("Nothing erased (not confirmed): pass --yes to erase without asking.")
    with _errors(), _gallery(gallery) as g:
        receipt = g.forget(subject)
    if as_json:
        _json(receipt.to_dict())
    else:
        out.print(
            f"Forgot '{receipt.subject}': {receipt.templates_removed} template(s) and {receipt.consents_removed} "
            f"consent record(s) erased from the store, {receipt.index_entries_removed} from the index."
        )


@app.command()
def subjects(gallery: GalleryOption, as_json: JsonOption = False) -> None:
    """Who is enrolled: template count, active purposes, consents. Never the templates.

    **Example:** `consentmatch subjects -g visitors.db --json`
    """
    with _errors(), _gallery(gallery) as g:
        listing = g.subjects()
    if as_json:
        for info in listing:
            _json(info.to_dict())
        return
    table = Table("Subject", "Templates", "Active purposes", "Consent", "Expires", "Jurisdiction")
    for info in listing:
        table.add_row(
            info.subject,
            str(info.templates),
            ", ".join(info.active_purposes) or "[red]none[/red]",
            ", ".join(c.reference for c in info.consents),
            ", ".join(_date(c.expires_at) for c in info.consents),
            ", ".join(c.jurisdiction or "-" for c in info.consents),
        )
    out.print(table)
    out.print(f"{len(listing)} subject(s).")


@app.command()
def demo(
    examples: Annotated[
        Optional[Path], typer.Option("--examples", help="Folder with people/, probes/ and consents.csv.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The main job end to end on the bundled example photos, in a throwaway gallery.

    Enrolls people with consent, shows an enrollment refused for lack of consent, matches
    probes, forgets someone and matches again. Nothing is kept.

    **Example:** `consentmatch demo`
    """
    from .demo import run

    with _errors():
        run(examples, out, as_json=as_json)


def main() -> None:
    """Console entry point: usage errors exit 2, and nothing ever ends in a traceback."""
    warnings.filterwarnings("ignore", category=UserWarning, module="face_recognition_models")
    try:
        app()
    except Exception as exc:  # a bug: say so in one line; the traceback only on request
        if os.environ.get("CONSENTMATCH_DEBUG"):
            raise
        _error(f"unexpected {type(exc).__name__}: {exc} (rerun with CONSENTMATCH_DEBUG=1 for a traceback)")
        sys.exit(1)
