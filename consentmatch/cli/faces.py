"""Commands over faces: enroll, import, match, verify, forget, subjects, demo."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..errors import ConsentMatchError, InvalidArgumentError
from ..policy import PROBE_MIN_FACE_PX
from ..text import visible
from ..text import shown as _shown
if TYPE_CHECKING:
    from ..consent import Consent
    from ..gallery import Gallery
    from ..results import MatchResult

from .common import (
    print_json_lines,
    table,
    app,
    out,
    GalleryOption,
    JsonOption,
    PurposeOption,
    QualityOption,
    DuplicateOption,
    ActorOption,
    DetectorOption,
    MinFaceOption,
    ToleranceOption,
    error,
    fail,
    progress_bar,
    mapped_errors,
    open_gallery,
    print_json,
    print_requests,
    day,
    consent_from,
    print_erasure,
    confirm,
)

CaseRefOption = Annotated[Optional[str], typer.Option(
    "--case-ref", help="For a purpose that needs approval: the case this search is for (files a request).")]
ReasonOption = Annotated[Optional[str], typer.Option(
    "--reason", help="For a purpose that needs approval: why the search is needed (files a request).")]

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
    signer: Annotated[str, typer.Option("--signer", help="Who signed: subject or guardian.")] = "subject",
    evidence: Annotated[
        Optional[Path], typer.Option("--evidence", help="The signed release; only its SHA-256 is kept. Required in US-IL and US-TX.")
    ] = None,
    notice_version: Annotated[
        Optional[str], typer.Option("--notice-version", help="Version of the written notice the person was shown.")
    ] = None,
    email: Annotated[
        Optional[str], typer.Option("--email", help="The person's e-mail: checked against opt-outs, kept as a keyed hash.")
    ] = None,
    quality: QualityOption = None,
    allow_duplicate: DuplicateOption = False,
    detector: DetectorOption = None,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Enroll a consenting person from one or more photos, all or nothing.

    Every photo must hold exactly one face, at least 80 px wide. Without --consent-ref the
    enrollment is refused. With --purpose the consent is recorded in the same step; without
    it, --consent-ref names a consent already recorded with `consentmatch consent grant`.
    With --jurisdiction US-IL or US-TX the consent also needs --evidence (the signed release).

    **Example:** `consentmatch enroll alice alice1.jpg alice2.jpg -g visitors.db --consent-ref FORM-17 --purpose visitor-check-in --expires 2027-12-31`
    """
    with mapped_errors():
        consent: Consent | str | None = consent_ref
        if consent_ref is not None and (purpose or expires or jurisdiction or evidence):
            consent = consent_from(consent_ref, purpose, expires, jurisdiction, signer, evidence, notice_version)
        with open_gallery(gallery, actor, detector, photos=True, as_json=as_json) as g:
            result = g.enroll(subject, photos, consent, email=email, min_face_px=min_face_px, quality=quality,
                              allow_duplicate=allow_duplicate)
    if as_json:
        print_json(result.to_dict())
    else:
        out.print(
            f"Enrolled '{_shown(result.subject)}': {result.templates_added} template(s) added, "
            f"{result.templates_total} in all, under consent {_shown(result.consent_reference)}."
            + (f" {result.already_enrolled} photo(s) already enrolled, not stored again." if result.already_enrolled else "")
        )


@app.command("import")
def import_(
    manifest: Annotated[
        Path, typer.Argument(help="CSV: subject,photo,consent_ref,purposes,expires,jurisdiction.")
    ],
    gallery: GalleryOption,
    quality: QualityOption = None,
    allow_duplicate: DuplicateOption = False,
    detector: DetectorOption = None,
    actor: ActorOption = None,
    as_json: JsonOption = False,
    ray: Annotated[
        Optional[str],
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Run the photo work on a Ray cluster: its address (HOST:PORT, or auto for the one running here), "
            "or local to start Ray on this machine for the import. Needs pip install 'consentmatch[ray]'. "
            "This process still checks and stores every row.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Bulk enrollment from a manifest CSV; bad rows are reported and skipped.

    Columns: subject,photo,consent_ref,purposes,expires,jurisdiction. Purposes are
    ;-separated, photo paths absolute or relative to the manifest, expires and jurisdiction
    may be empty, and several rows may name one subject. Optional columns: evidence (the
    release file or its SHA-256), signer, notice_version, email. Exit 1 if any row was rejected.
    Run again on the same manifest (after a crash), it stores only the rows not yet stored.

    **Example:** `consentmatch import examples/consents.csv -g visitors.db`
    """
    from ..runners import RayRunner

    with mapped_errors():
        runner = RayRunner(ray) if ray is not None else None  # Ray missing: the install hint, before any work
    with mapped_errors(), open_gallery(gallery, actor, detector, photos=True, as_json=as_json) as g:
        with progress_bar("enrolling") as advance:
            report = g.import_manifest(
                manifest, progress=advance, quality=quality, allow_duplicate=allow_duplicate, runner=runner
            )
    for rejection in report.rejected:
        error(f"{rejection.photo or '-'} (row {rejection.row}): {rejection.reason}")
    if as_json:
        print_json(report.to_dict())
    else:
        out.print(
            f"Imported {len(report.enrolled)} of {report.rows} row(s): {len(report.subjects)} subject(s) enrolled, "
            f"{len(report.rejected)} row(s) rejected"
            + (f", {report.already_enrolled} row(s) already enrolled (nothing stored again)." if report.already_enrolled else ".")
        )
        if report.rejected:
            grid = table("Row", "Subject", "Photo", "Reason", title="Rejected")
            for r in report.rejected:
                grid.add_row(str(r.row), _shown(r.subject), _shown(r.photo), _shown(r.reason))
            out.print(grid)
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
    purpose: PurposeOption = None,
    tolerance: ToleranceOption = None,
    top_k: Annotated[int, typer.Option(
        "--top-k", "-k", min=1, max=1000,
        help="Nearest subjects listed per face, at most the policy's max_top_k (10 unless raised).",
    )] = 5,
    min_face_px: MinFaceOption = PROBE_MIN_FACE_PX,
    detector: DetectorOption = None,
    actor: ActorOption = None,
    as_json: JsonOption = False,
    annotate: Annotated[Optional[Path], typer.Option(
        "--annotate", help="Write a copy of each probe into this folder with its face boxes and names drawn, for review.",
    )] = None,
    case_ref: CaseRefOption = None,
    reason: ReasonOption = None,
) -> None:
    """1:N: who is in each photo, among the people consented for the purpose.

    Prints, for every face, its box, the best subject within the tolerance (or none) and the
    top-k nearest subjects, photo by photo in the order given (several photos are read at once,
    one per CPU). No match is a result (exit 0); an unreadable photo is reported on stderr and
    gives exit 1 after the others are processed. With --annotate DIR, a copy of each probe
    (same base name, JPEG or PNG) shows every face's box labelled with the subject matched
    within the tolerance, else "no match" or "ambiguous": never a candidate the result does not name.

    A purpose that needs a department's approval (policy approval_purposes) is not searched:
    with --case-ref and --reason each photo becomes a pending request (`consentmatch request`).

    **Example:** `consentmatch match door1.jpg door2.jpg -g visitors.db --purpose visitor-check-in --json`
    """
    from ..consent import check_purpose

    with mapped_errors():
        if purpose is not None:
            check_purpose(purpose)
    if case_ref is not None or reason is not None:
        with mapped_errors(), open_gallery(gallery, actor, detector, existing=True, photos=True) as g:
            held = [g.request_match(photo, purpose=_approval_purpose(purpose), case_ref=_given(case_ref, "--case-ref"),
                                    reason=_given(reason, "--reason"), tolerance=tolerance, top_k=top_k)
                    for photo in photos]
        print_requests(held, as_json)
        return
    results: list[MatchResult] = []
    failed = False
    written: set[str] = set()
    with mapped_errors(), open_gallery(gallery, actor, detector, existing=True, photos=True) as g:
        for result in g.match_many(photos, purpose=purpose, tolerance=tolerance, top_k=top_k, min_face_px=min_face_px):
            if result.error is not None:
                failed = True
                error(result.error)
            else:
                results.append(result)
                if annotate is not None:
                    _annotate(result, annotate, written)
            if as_json:
                print_json(result.to_dict())
    if not as_json:
        _print_matches(results)
    if failed:
        raise typer.Exit(1)


def _annotate(result: MatchResult, folder: Path, written: set[str]) -> None:
    """Write the probe's reviewed copy: each face's box and the name the result gives it, nothing more."""
    from ..images import annotate

    source = Path(result.image)
    suffix = ".jpg" if source.suffix.lower() in (".jpg", ".jpeg") else ".png"
    stem, number = source.stem, 1
    while f"{stem}{suffix}" in written:  # two probes of one base name from different folders
        number += 1
        stem = f"{source.stem}-{number}"
    written.add(f"{stem}{suffix}")
    labels = [((f.box.top, f.box.right, f.box.bottom, f.box.left), f.subject or ("ambiguous" if f.ambiguous else "no match"))
              for f in result.faces]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        annotate(source, labels, folder / f"{stem}{suffix}")
    except OSError as exc:
        fail(f"Cannot write the annotated copy of '{_shown(result.image)}' into '{_shown(str(folder))}' "
             f"({exc.strerror or exc}): check --annotate.", 1)


def _print_matches(results: list[MatchResult]) -> None:
    grid = table("Image", "Face", "Box (t,r,b,l)", "Subject", "Distance", "Nearest candidates")
    for result in results:
        if not result.faces:
            grid.add_row(_shown(result.image), "-", "-", "[dim]no face found[/dim]", "-", "-")
        for number, face in enumerate(result.faces, start=1):
            nearest = ", ".join(f"{_shown(c.subject)} {c.distance:.3f}" for c in face.candidates[:3]) or "-"
            grid.add_row(
                _shown(result.image),
                str(number),
                ",".join(map(str, face.box.to_list())),
                _shown(face.subject) if face.subject else ("[yellow]ambiguous[/yellow]" if face.ambiguous else "[dim]no match[/dim]"),
                f"{face.distance:.3f}" if face.distance is not None else "-",
                nearest,
            )
    out.print(grid)


@app.command()
def verify(
    subject: Annotated[str, typer.Argument(help="The enrolled person to check against.")],
    photo: Annotated[Path, typer.Argument(help="A probe photo holding exactly one face.")],
    gallery: GalleryOption,
    purpose: PurposeOption = None,
    tolerance: ToleranceOption = None,
    min_face_px: MinFaceOption = PROBE_MIN_FACE_PX,
    detector: DetectorOption = None,
    actor: ActorOption = None,
    as_json: JsonOption = False,
    case_ref: CaseRefOption = None,
    reason: ReasonOption = None,
) -> None:
    """1:1: is the one face in the photo this subject? (e.g. before a large transfer)

    Exit 0 with match true or false: a subject without an active enrollment for the purpose
    gets the answer of a non-match, so verify tells nobody who is enrolled (the audit trail
    records which it was); exit 1 when the check could not be made (no face or several faces).
    Refusals are recorded in the audit trail.
    Not authentication on its own: there is no liveness check. A purpose that needs approval
    takes --case-ref and --reason and files a request instead (`consentmatch request`).

    **Example:** `consentmatch verify alice selfie.jpg -g customers.db --purpose transfer-check --json`
    """
    if case_ref is not None or reason is not None:
        with mapped_errors(), open_gallery(gallery, actor, detector, existing=True, photos=True) as g:
            held = g.request_verify(subject, photo, purpose=_approval_purpose(purpose),
                                    case_ref=_given(case_ref, "--case-ref"), reason=_given(reason, "--reason"),
                                    tolerance=tolerance)
        print_requests([held], as_json)
        return
    with mapped_errors(), open_gallery(gallery, actor, detector, existing=True, photos=True) as g:
        try:
            result = g.verify(subject, photo, purpose=purpose, tolerance=tolerance, min_face_px=min_face_px)
        except ConsentMatchError as exc:
            if as_json and not isinstance(exc, InvalidArgumentError):
                print_json(
                    {"subject": subject, "image": str(photo), "match": False, "distance": None,
                     "tolerance": tolerance if tolerance is not None else _policy_tolerance(g), "error": str(exc)}
                )
            raise
    if as_json:
        print_json(result.to_dict())
    else:
        verdict = "[green]MATCH[/green]" if result.match else "[red]NO MATCH[/red]"
        measure = f"distance {result.distance:.3f} <=" if result.distance is not None else "beyond the"
        out.print(f"{verdict}: '{_shown(result.image)}' vs '{_shown(result.subject)}': {measure} "
                  f"tolerance {result.tolerance:.2f}")


def _given(value: str | None, option: str) -> str:
    if value is None:
        fail(f"A search request needs both --case-ref and --reason: add {option}.", 2)
    return value


def _approval_purpose(purpose: str | None) -> str:
    if purpose is None:
        fail("A search request names its purpose: add --purpose P (one in the policy's approval_purposes).", 2)
    return purpose


def _policy_tolerance(gallery: Gallery) -> float:
    try:
        return float(gallery.policy()["tolerance"])
    except ConsentMatchError:
        return 0.6


# -- forget / subjects -----------------------------------------------------------------------


@app.command()
def forget(
    subject: Annotated[str, typer.Argument(help="The person to erase.")],
    gallery: GalleryOption,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Erase a person: templates, consent records and index entries, at once and for good.

    **Example:** `consentmatch forget alice -g visitors.db --yes`
    """
    confirm(yes, f"Erase '{visible(subject)}' from {visible(str(gallery))} for good?")
    with mapped_errors(), open_gallery(gallery, actor, existing=True) as g:
        receipt = g.forget(subject)
    if as_json:
        print_json(receipt.to_dict())
    else:
        print_erasure(receipt)


@app.command()
def subjects(gallery: GalleryOption, as_json: JsonOption = False) -> None:
    """Who is enrolled: template count, active purposes, consents. Never the templates.

    **Example:** `consentmatch subjects -g visitors.db --json`
    """
    with mapped_errors(), open_gallery(gallery, existing=True) as g:
        listing = g.subjects()
    if as_json:
        print_json_lines(listing)
        return
    grid = table("Subject", "Templates", "Active purposes", "Consent", "Expires", "Jurisdiction")
    for info in listing:
        grid.add_row(
            _shown(info.subject),
            str(info.templates),
            _shown(", ".join(info.active_purposes)) or "[red]none[/red]",
            _shown(", ".join(c.reference for c in info.consents)),
            ", ".join(day(c.expires_at) for c in info.consents),
            _shown(", ".join(c.jurisdiction or "-" for c in info.consents)),
        )
    out.print(grid)
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
    from ..demo import run

    with mapped_errors():
        run(examples, out.console(), as_json=as_json)
