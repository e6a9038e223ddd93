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
from .policy import POLICY, PROBE_MIN_FACE_PX
from .text import shown as _shown
from .text import visible

if TYPE_CHECKING:
    from .consent import Consent
    from .gallery import Gallery
    from .results import ConsentRecord, Erasure, MatchResult

app = typer.Typer(
    name="consentmatch",
    help="Consent-based face matching: a gallery that holds only faces enrolled with a recorded consent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # never a traceback with locals (they could hold a probe)
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)

# emoji=False: a subject named ":smile:" is shown as typed, not as an emoji.
out = Console(highlight=False, soft_wrap=True, emoji=False)

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
        help="Who is calling, for the audit trail (default: local:<OS user>).",
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


def _error(message: str) -> None:
    """One line on stderr: no wrapping, no markup, no traceback, no raw control character."""
    print(f"error: {visible(' '.join(message.split()))}", file=sys.stderr, flush=True)


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


def _gallery(path: Path, actor: str | None = None) -> Gallery:
    from .gallery import Gallery

    return Gallery(path, actor=actor)


def _json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False), flush=True)


def _date(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d}" if moment else "-"


def _consent(
    reference: str,
    purposes: list[str] | None,
    expires: str | None,
    jurisdiction: str | None,
    signer: str,
    evidence: Path | None,
    notice_version: str | None,
) -> Consent:
    from .consent import Consent, evidence_digest, parse_expiry

    return Consent(
        reference=reference,
        purposes=tuple(purposes or ()),
        expires_at=parse_expiry(expires) if expires else None,
        jurisdiction=jurisdiction,
        signer=signer,
        evidence_sha256=evidence_digest(evidence) if evidence else None,
        notice_version=notice_version,
    )


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
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Enroll a consenting person from one or more photos, all or nothing.

    Every photo must hold exactly one face, at least 80 px wide. Without --consent-ref the
    enrollment is refused. With --purpose the consent is recorded in the same step; without
    it, --consent-ref names a consent already recorded with `consentmatch consent grant`.

    **Example:** `consentmatch enroll alice alice1.jpg alice2.jpg -g visitors.db --consent-ref FORM-17 --purpose visitor-check-in --expires 2027-12-31 --jurisdiction US-IL`
    """
    with _errors():
        consent: Consent | str | None = consent_ref
        if consent_ref is not None and (purpose or expires or jurisdiction or evidence):
            consent = _consent(consent_ref, purpose, expires, jurisdiction, signer, evidence, notice_version)
        with _gallery(gallery, actor) as g:
            result = g.enroll(subject, photos, consent, email=email, min_face_px=min_face_px, quality=quality,
                              allow_duplicate=allow_duplicate)
    if as_json:
        _json(result.to_dict())
    else:
        out.print(
            f"Enrolled '{_shown(result.subject)}': {result.templates_added} template(s) added, "
            f"{result.templates_total} in all, under consent {_shown(result.consent_reference)}."
        )


@app.command("import")
def import_(
    manifest: Annotated[
        Path, typer.Argument(help="CSV: subject,photo,consent_ref,purposes,expires,jurisdiction.")
    ],
    gallery: GalleryOption,
    quality: QualityOption = None,
    allow_duplicate: DuplicateOption = False,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Bulk enrollment from a manifest CSV; bad rows are reported and skipped.

    Columns: subject,photo,consent_ref,purposes,expires,jurisdiction. Purposes are
    ;-separated, photo paths absolute or relative to the manifest, expires and jurisdiction
    may be empty, and several rows may name one subject. Optional columns: evidence (the
    release file or its SHA-256), signer, notice_version, email. Exit 1 if any row was rejected.

    **Example:** `consentmatch import examples/consents.csv -g visitors.db`
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with _errors(), _gallery(gallery, actor) as g:
        err = Console(stderr=True)
        progress = Progress(
            TextColumn("enrolling"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,  # scripts reading stderr get only the error lines
        )
        with progress:
            task = progress.add_task("import", total=None)
            report = g.import_manifest(
                manifest,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
                quality=quality,
                allow_duplicate=allow_duplicate,
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
                table.add_row(str(r.row), _shown(r.subject), _shown(r.photo), _shown(r.reason))
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
    tolerance: ToleranceOption = None,
    top_k: Annotated[int, typer.Option(
        "--top-k", "-k", min=1, max=1000,
        help="Nearest subjects listed per face, at most the policy's max_top_k (10 unless raised).",
    )] = 5,
    min_face_px: MinFaceOption = PROBE_MIN_FACE_PX,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """1:N: who is in each photo, among the people consented for the purpose.

    Prints, for every face, its box, the best subject within the tolerance (or none) and the
    top-k nearest subjects, photo by photo in the order given (several photos are read at once,
    one per CPU). No match is a result (exit 0); an unreadable photo is reported on stderr and
    gives exit 1 after the others are processed.

    **Example:** `consentmatch match door1.jpg door2.jpg -g visitors.db --purpose visitor-check-in --json`
    """
    from .consent import check_purpose

    with _errors():
        if purpose is not None:
            check_purpose(purpose)
    results: list[MatchResult] = []
    failed = False
    with _errors(), _gallery(gallery, actor) as g:
        for result in g.match_many(photos, purpose=purpose, tolerance=tolerance, top_k=top_k, min_face_px=min_face_px):
            if result.error is not None:
                failed = True
                _error(result.error)
            else:
                results.append(result)
            if as_json:
                _json(result.to_dict())
    if not as_json:
        _print_matches(results)
    if failed:
        raise typer.Exit(1)


def _print_matches(results: list[MatchResult]) -> None:
    table = Table("Image", "Face", "Box (t,r,b,l)", "Subject", "Distance", "Nearest candidates")
    for result in results:
        if not result.faces:
            table.add_row(_shown(result.image), "-", "-", "[dim]no face found[/dim]", "-", "-")
        for number, face in enumerate(result.faces, start=1):
            nearest = ", ".join(f"{_shown(c.subject)} {c.distance:.3f}" for c in face.candidates[:3]) or "-"
            table.add_row(
                _shown(result.image),
                str(number),
                ",".join(map(str, face.box.to_list())),
                _shown(face.subject) if face.subject else ("[yellow]ambiguous[/yellow]" if face.ambiguous else "[dim]no match[/dim]"),
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
    tolerance: ToleranceOption = None,
    min_face_px: MinFaceOption = PROBE_MIN_FACE_PX,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """1:1: is the one face in the photo this subject? (e.g. before a large transfer)

    Exit 0 with match true or false; exit 1 when the check could not be made (no active
    enrollment of the subject for the purpose, one answer whether or not they are enrolled;
    no face or several faces). Refusals are recorded in the audit trail.
    Not authentication on its own: there is no liveness check.

    **Example:** `consentmatch verify alice selfie.jpg -g customers.db --purpose transfer-check --json`
    """
    with _errors(), _gallery(gallery, actor) as g:
        try:
            result = g.verify(subject, photo, purpose=purpose, tolerance=tolerance, min_face_px=min_face_px)
        except ConsentMatchError as exc:
            if as_json and not isinstance(exc, InvalidArgumentError):
                _json(
                    {"subject": subject, "image": str(photo), "match": False, "distance": None,
                     "tolerance": tolerance if tolerance is not None else _policy_tolerance(g), "error": str(exc)}
                )
            raise
    if as_json:
        _json(result.to_dict())
    else:
        verdict = "[green]MATCH[/green]" if result.match else "[red]NO MATCH[/red]"
        sign = "<=" if result.match else ">"
        out.print(
            f"{verdict}: '{_shown(result.image)}' vs '{_shown(result.subject)}': distance {result.distance:.3f} "
            f"{sign} tolerance {result.tolerance:.2f}"
        )


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
    _confirm(yes, f"Erase '{visible(subject)}' from {visible(str(gallery))} for good?")
    with _errors(), _gallery(gallery, actor) as g:
        receipt = g.forget(subject)
    if as_json:
        _json(receipt.to_dict())
    else:
        _print_erasure(receipt)


def _print_erasure(receipt: Erasure) -> None:
    check = "post-check passed: none of them can be found" if receipt.verified else "[red]POST-CHECK FAILED[/red]"
    out.print(
        f"Erased '{_shown(receipt.subject)}' ({_shown(receipt.reason)}): {receipt.templates_removed} template(s) and "
        f"{receipt.consents_removed} consent record(s) from the store, {receipt.index_entries_removed} "
        f"entries from the index; {check}."
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
            _shown(info.subject),
            str(info.templates),
            _shown(", ".join(info.active_purposes)) or "[red]none[/red]",
            _shown(", ".join(c.reference for c in info.consents)),
            ", ".join(_date(c.expires_at) for c in info.consents),
            _shown(", ".join(c.jurisdiction or "-" for c in info.consents)),
        )
    out.print(table)
    out.print(f"{len(listing)} subject(s).")


# -- consent records ------------------------------------------------------------------------

consent_app = typer.Typer(
    help="Consent records: grant before enrolling, show, revoke (erases the templates), list.",
    no_args_is_help=True,
)
app.add_typer(consent_app, name="consent")


@consent_app.command("grant")
def consent_grant(
    subject: Annotated[str, typer.Argument(help="The person the consent covers.")],
    gallery: GalleryOption,
    ref: Annotated[str, typer.Option("--ref", "--consent-ref", "-c", help="Reference of the signed release.")],
    purpose: Annotated[list[str], typer.Option("--purpose", "-p", help="A purpose it covers; repeat for several.")],
    expires: Annotated[Optional[str], typer.Option("--expires", help="End date, YYYY-MM-DD.")] = None,
    jurisdiction: Annotated[Optional[str], typer.Option("--jurisdiction", help="ISO 3166 code, e.g. US-IL.")] = None,
    signer: Annotated[str, typer.Option("--signer", help="subject or guardian.")] = "subject",
    evidence: Annotated[
        Optional[Path], typer.Option("--evidence", help="The signed release file; only its SHA-256 is kept.")
    ] = None,
    notice_version: Annotated[Optional[str], typer.Option("--notice-version", help="Notice shown to the person.")] = None,
    email: Annotated[Optional[str], typer.Option("--email", help="Checked against opt-outs; kept as a keyed hash.")] = None,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Record a consent, before (or without) enrolling photos.

    In US-IL (BIPA) and US-TX (CUBI) a written release is required: pass it with --evidence.

    **Example:** `consentmatch consent grant alice -g visitors.db --ref FORM-17 --purpose visitor-check-in --jurisdiction US-IL --evidence form17.pdf --notice-version v3`
    """
    with _errors():
        consent = _consent(ref, purpose, expires, jurisdiction, signer, evidence, notice_version)
        with _gallery(gallery, actor) as g:
            record = g.grant_consent(subject, consent, email=email)
    _print_consents([record], as_json)


@consent_app.command("show")
def consent_show(
    ref: Annotated[str, typer.Argument(help="The consent's reference.")],
    gallery: GalleryOption,
    as_json: JsonOption = False,
) -> None:
    """Show one consent record.

    **Example:** `consentmatch consent show FORM-17 -g visitors.db --json`
    """
    with _errors(), _gallery(gallery) as g:
        record = g.consent(ref)
    _print_consents([record], as_json)


@consent_app.command("list")
def consent_list(
    gallery: GalleryOption,
    subject: Annotated[Optional[str], typer.Option("--subject", "-s", help="Only this person's records.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List consent records, revoked ones included (kept as non-biometric tombstones).

    **Example:** `consentmatch consent list -g visitors.db --subject alice`
    """
    with _errors(), _gallery(gallery) as g:
        records = g.consents(subject)
    _print_consents(records, as_json)


@consent_app.command("revoke")
def consent_revoke(
    ref: Annotated[str, typer.Argument(help="The consent's reference.")],
    gallery: GalleryOption,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke a consent: the person's templates are erased at once; the record stays as a tombstone.

    Idempotent: revoking twice erases nothing more.

    **Example:** `consentmatch consent revoke FORM-17 -g visitors.db --yes`
    """
    _confirm(yes, f"Revoke consent '{visible(ref)}' and erase the person's templates?")
    with _errors(), _gallery(gallery, actor) as g:
        receipt = g.revoke_consent(ref)
    if as_json:
        _json(receipt.to_dict())
    else:
        _print_erasure(receipt)


def _confirm(yes: bool, question: str) -> None:
    try:
        confirmed = yes or typer.confirm(question, err=True)
    except typer.Abort:  # no answer (stdin closed, Ctrl-C)
        confirmed = False
    if not confirmed:
        _fail("Nothing erased (not confirmed): pass --yes to erase without asking.")


def _print_consents(records: list[ConsentRecord], as_json: bool) -> None:
    if as_json:
        for record in records:
            _json(record.to_dict())
        return
    table = Table("Reference", "Subject", "Purposes", "Granted", "Expires", "Jurisdiction", "Signer", "Evidence", "State")
    for r in records:
        state = "revoked " + _date(r.revoked_at) if r.revoked_at else ("active" if r.active else "inactive")
        table.add_row(
            _shown(r.reference), _shown(r.subject), _shown(", ".join(r.purposes)), _date(r.granted_at),
            _date(r.expires_at), _shown(r.jurisdiction or "-"), _shown(r.signer), _shown((r.evidence_sha256 or "-")[:12]),
            state,
        )
    out.print(table)


# -- policy, retention, opt-out --------------------------------------------------------------

policy_app = typer.Typer(help=f"The gallery's policy: {', '.join(k.name for k in POLICY)}.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@policy_app.command("show")
def policy_show(gallery: GalleryOption, as_json: JsonOption = False) -> None:
    """Show the gallery's policy.

    **Example:** `consentmatch policy show -g visitors.db`
    """
    with _errors(), _gallery(gallery) as g:
        policy = g.policy()
    _print_policy(policy, as_json)


_POLICY_KEYS = "\n\n".join(f"- `{k.name}` (default `{json.dumps(k.default)}`): {k.help}." for k in POLICY)


@policy_app.command("set", help=f"""Change one policy key (audited).

{_POLICY_KEYS}

**Example:** `consentmatch policy set excluded_regions US-IL,US-TX -g visitors.db`
""")
def policy_set(
    key: Annotated[str, typer.Argument(help=f"One of: {', '.join(k.name for k in POLICY)}.")],
    value: Annotated[str, typer.Argument(help="true/false; comma-separated ISO 3166 codes (\"\" for none); a number; a level.")],
    gallery: GalleryOption,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    with _errors(), _gallery(gallery, actor) as g:
        policy = g.set_policy(key, value)
    _print_policy(policy, as_json)


def _print_policy(policy: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _json(policy)
        return
    for key, value in policy.items():
        shown = ",".join(value) if isinstance(value, list) else str(value).lower() if isinstance(value, bool) else value
        out.print(f"{_shown(key)} = {_shown(shown) if shown != '' else '(none)'}")


@app.command()
def retention(gallery: GalleryOption, as_json: JsonOption = False) -> None:
    """When each person's templates must be destroyed, by jurisdiction (BIPA, CUBI, consent term).

    Overdue people are never matched; `consentmatch purge` destroys their templates.

    **Example:** `consentmatch retention -g visitors.db --json`
    """
    with _errors(), _gallery(gallery) as g:
        entries = g.retention()
    if as_json:
        for entry in entries:
            _json(entry.to_dict())
        return
    table = Table("Subject", "Templates", "Destroy by", "Rule", "State")
    for e in entries:
        table.add_row(_shown(e.subject), str(e.templates), _date(e.destroy_by), _shown(e.rule),
                      "[red]overdue[/red]" if e.overdue else "ok")
    out.print(table)


@app.command()
def purge(
    gallery: GalleryOption,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Destroy the templates of everyone past their retention date.

    **Example:** `consentmatch purge -g visitors.db --yes`
    """
    _confirm(yes, "Destroy the templates of everyone past their retention date?")
    with _errors(), _gallery(gallery, actor) as g:
        receipts = g.purge()
    if as_json:
        for receipt in receipts:
            _json(receipt.to_dict())
        return
    for receipt in receipts:
        _print_erasure(receipt)
    out.print(f"Purged {len(receipts)} subject(s).")


optout_app = typer.Typer(help="The do-not-enroll registry: subject references or e-mails (keyed hashes).",
                         no_args_is_help=True)
app.add_typer(optout_app, name="optout")
SubjectKey = Annotated[Optional[str], typer.Option("--subject", "-s", help="The customer's reference for the person.")]
EmailKey = Annotated[Optional[str], typer.Option("--email", help="The person's e-mail (stored only as a keyed hash).")]


@optout_app.command("add")
def optout_add(
    gallery: GalleryOption,
    subject: SubjectKey = None,
    email: EmailKey = None,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Put a person on the do-not-enroll list; anyone it names is erased at once.

    **Example:** `consentmatch optout add --email jane@example.com -g visitors.db`
    """
    with _errors(), _gallery(gallery, actor) as g:
        receipts = g.add_optout(subject=subject, email=email)
    if as_json:
        _json({"added": True, "erased": [r.to_dict() for r in receipts]})
        return
    out.print("Opt-out recorded.")
    for receipt in receipts:
        _print_erasure(receipt)


@optout_app.command("remove")
def optout_remove(
    gallery: GalleryOption,
    subject: SubjectKey = None,
    email: EmailKey = None,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Take an entry off the do-not-enroll list (only at the person's own request).

    **Example:** `consentmatch optout remove --subject alice -g visitors.db`
    """
    with _errors(), _gallery(gallery, actor) as g:
        removed = g.remove_optout(subject=subject, email=email)
    if as_json:
        _json({"removed": removed})
    else:
        out.print("Opt-out removed." if removed else "No such opt-out.")


@optout_app.command("list")
def optout_list(gallery: GalleryOption, as_json: JsonOption = False) -> None:
    """List the do-not-enroll registry (e-mails appear as hashes).

    **Example:** `consentmatch optout list -g visitors.db`
    """
    with _errors(), _gallery(gallery) as g:
        entries = g.optouts()
    if as_json:
        for entry in entries:
            _json(entry.to_dict())
        return
    table = Table("Kind", "Value", "Added")
    for entry in entries:
        table.add_row(_shown(entry.kind), _shown(entry.value), _date(entry.added_at))
    out.print(table)


# -- audit and subject access ----------------------------------------------------------------


@app.command("audit")
def audit_(
    gallery: GalleryOption,
    subject: Annotated[Optional[str], typer.Option("--subject", "-s", help="Only events naming this person.")] = None,
    check: Annotated[bool, typer.Option("--verify", help="Walk the hash chain and check every record: exit 0 intact, 1 broken.")] = False,
    as_json: JsonOption = False,
) -> None:
    """The audit trail: who did what, when, for which purpose. Never an image or an embedding.

    With --verify, walks the hash chain and names the first edited, deleted or inserted event,
    then checks every subject, consent and template for edits made outside consentmatch.

    **Example:** `consentmatch audit -g visitors.db --verify`
    """
    with _errors(), _gallery(gallery) as g:
        if check:
            result = g.verify_audit()
        else:
            events = g.audit(subject)
    if check:
        if as_json:
            _json(result.to_dict())
        elif result.intact:
            out.print(f"Audit trail intact: {result.events} event(s), head {_shown(result.head)}.")
        if not result.intact and result.broken_at is None:  # the chain holds, a subject or consent row does not
            _fail(f"Gallery tampered: {result.problem}: restore the gallery from a backup.")
        if not result.intact:
            _fail(f"Audit trail broken at event {result.broken_at}: {result.problem}.")
        return
    if as_json:
        for event in events:
            _json(event.to_dict())
        return
    table = Table("#", "When (UTC)", "Actor", "Action", "Subject", "Purpose", "Details")
    for e in events:
        details = ", ".join(f"{k}={v}" for k, v in e.details.items())
        table.add_row(str(e.seq), f"{e.at:%Y-%m-%d %H:%M:%S}", _shown(e.actor), _shown(e.action), _shown(e.subject or "-"),
                      _shown(e.purpose or "-"), _shown(details))
    out.print(table)


@app.command()
def export(
    subject: Annotated[str, typer.Argument(help="The person asking for their data.")],
    gallery: GalleryOption,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the bundle here instead of stdout.")] = None,
    actor: ActorOption = None,
) -> None:
    """A subject access bundle (JSON): consents, template metadata (no embeddings), retention, audit.

    **Example:** `consentmatch export alice -g visitors.db -o alice-dsar.json`
    """
    with _errors(), _gallery(gallery, actor) as g:
        bundle = g.export(subject)
    text = json.dumps(bundle, indent=2, ensure_ascii=False)
    if output is None:
        print(text)
        return
    try:
        output.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        _fail(f"Cannot write '{output}' ({exc.strerror or exc}).")
    out.print(f"Wrote {_shown(output)}.")


# -- keys ------------------------------------------------------------------------------------

key_app = typer.Typer(
    help="Template encryption keys: where they are, rotation, a new key for CONSENTMATCH_KEY.", no_args_is_help=True
)
app.add_typer(key_app, name="key")


@key_app.command("info")
def key_info(gallery: GalleryOption, as_json: JsonOption = False) -> None:
    """Where the gallery's keys are and how many subject data keys exist (never the keys).

    **Example:** `consentmatch key info -g visitors.db`
    """
    with _errors(), _gallery(gallery) as g:
        info = g.key_info()
    if as_json:
        _json(info.to_dict())
    else:
        out.print(f"gallery {_shown(info.gallery_id)}: key from {_shown(info.key_source)}; data keys in {_shown(info.key_dir)} "
                  f"({info.data_keys})")


@key_app.command("rotate")
def key_rotate(
    gallery: GalleryOption,
    new_key_file: Annotated[
        Optional[Path], typer.Option("--new-key-file", help="Where to write the new key when CONSENTMATCH_KEY holds it.")
    ] = None,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-wrap every subject's data key under a new gallery key (audited).

    A key file is replaced in place; a key in CONSENTMATCH_KEY needs --new-key-file to receive the new one.

    **Example:** `consentmatch key rotate -g visitors.db`
    """
    import os

    from .crypto import generate_key, write_private

    new_key = None
    if os.environ.get("CONSENTMATCH_KEY"):
        if new_key_file is None:
            _fail("The gallery key comes from CONSENTMATCH_KEY: pass --new-key-file FILE to receive the new one.", 2)
        new_key = generate_key()
        try:
            write_private(new_key_file, new_key.encode())  # stored before any data key is re-wrapped
        except OSError as exc:
            _fail(f"Cannot write '{new_key_file}' ({exc.strerror or exc}): nothing rotated.")
    with _errors(), _gallery(gallery, actor) as g:
        info = g.rotate_key(new_key=new_key)
    if as_json:
        _json({**info.to_dict(), "new_key_file": str(new_key_file) if new_key else None})
    else:
        where = f"; the new key is in {_shown(new_key_file)}: put it in CONSENTMATCH_KEY" if new_key else ""
        out.print(f"Rotated the gallery key: {info.data_keys} data key(s) re-wrapped{where}.")


@key_app.command("generate")
def key_generate() -> None:
    """Print a new random gallery key (64 hex digits) for CONSENTMATCH_KEY or a key file.

    **Example:** `export CONSENTMATCH_KEY=$(consentmatch key generate)`
    """
    from .crypto import generate_key

    print(generate_key())


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


# -- evaluate / calibrate --------------------------------------------------------------------

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .evaluate import Failure

EvaluateToleranceOption = Annotated[
    float,
    typer.Option(
        "--tolerance",
        "-t",
        min=0.0,
        max=2.0,
        help="The tolerance at which accuracy, FMR and FNMR (or FNIR and FPIR) are reported.",
    ),
]


def _encoding_progress() -> tuple[Any, Callable[[int, int], None]]:
    """A transient progress bar on stderr (only on a terminal), and the callback that advances it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("encoding"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    task = progress.add_task("encode", total=None)
    return progress, lambda done, total: progress.update(task, completed=done, total=total)


def _rate(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@app.command()
def evaluate(
    pairs: Annotated[
        Optional[Path],
        typer.Argument(
            metavar="PAIRS.csv", help="CSV of file_x,file_y,same (same: yes/no, true/false, 1/0).", show_default=False
        ),
    ] = None,
    identities: Annotated[
        Optional[Path],
        typer.Option(
            "--identities",
            help="Open-set 1:N instead: a folder per person. Half of each person's photos are enrolled, the "
            "rest are probes; every third person (in name order) is never enrolled.",
            show_default=False,
        ),
    ] = None,
    tolerance: EvaluateToleranceOption = 0.6,
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", help="Write the DET curve and the two distance histograms to this PNG.", show_default=False),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Measure accuracy on your own people: 1:1 pairs (FMR, FNMR, EER) or open-set 1:N.

    With PAIRS.csv: every distinct photo is encoded once, and each pair of photos of the same
    person (same=yes) or of different people (same=no) is compared. Reports accuracy, FMR and
    FNMR at the tolerance, the EER, and FNMR at FMR 1e-2, 1e-3 and 1e-4 where there are enough
    different-person pairs (at least 1/FMR). With --identities DIR: rank-1, FNIR and FPIR.
    Photos without exactly one face are failures to enrol: listed on stderr and counted, not
    fatal (exit 0). No gallery is read or written.

    **Example:** `consentmatch evaluate pairs.csv --tolerance 0.6 --plot det.png --json`
    """
    if pairs is not None and identities is None:
        _evaluate_pairs(pairs, tolerance, plot, as_json)
    elif identities is not None and pairs is None:
        if plot is not None:
            _fail("--plot draws the curves of a pairs file: use it with PAIRS.csv, not --identities.", 2)
        _evaluate_identities(identities, tolerance, as_json)
    else:
        _fail("Give PAIRS.csv or --identities DIR, exactly one: see consentmatch evaluate --help.", 2)


def _evaluate_pairs(pairs: Path, tolerance: float, plot: Path | None, as_json: bool) -> None:
    from . import evaluate as evaluation
    from .policy import check_tolerance

    progress, advance = _encoding_progress()
    with _errors():
        check_tolerance(tolerance)
        with progress:
            scores = evaluation.score_pairs(pairs, progress=advance)
        result = evaluation.evaluate(scores, tolerance)
        if plot is not None:
            evaluation.plot(scores, result, plot)
    _print_failures(result.failures)
    if as_json:
        _json(result.to_dict() | {"plot": str(plot) if plot else None})
        return
    table = Table("Measure", "Value", title=f"{result.pairs} pair(s) from {_shown(pairs)}")
    table.add_row("Pairs", f"{result.genuine_pairs} same person, {result.impostor_pairs} different people")
    table.add_row("Tolerance", f"{result.tolerance:g}")
    table.add_row("Accuracy", _rate(result.accuracy))
    table.add_row("FMR", _rate(result.fmr))
    table.add_row("FNMR", _rate(result.fnmr))
    table.add_row("EER", f"{_rate(result.eer)} at tolerance {_rate(result.eer_tolerance, 3)}")
    for target, fnmr in result.fnmr_at_fmr:
        table.add_row(f"FNMR at FMR {target:g}", _rate(fnmr))
    table.add_row("Failures to enrol", f"{len(result.failures)} ({result.photos} photo(s) encoded)")
    out.print(table)
    for note in result.notes:
        out.print(f"note: {_shown(note)}")
    if plot is not None:
        out.print(f"Plot written to {_shown(plot)}.")


def _evaluate_identities(folder: Path, tolerance: float, as_json: bool) -> None:
    from .evaluate import evaluate_identities
    from .policy import check_tolerance

    progress, advance = _encoding_progress()
    with _errors():
        check_tolerance(tolerance)
        with progress:
            result = evaluate_identities(folder, tolerance, progress=advance)
    _print_failures(result.failures)
    if as_json:
        _json(result.to_dict())
        return
    table = Table("Measure", "Value", title=f"Open-set 1:N on {_shown(folder)}")
    table.add_row("People", f"{result.people} ({result.enrolled_people} enrolled, {result.templates} template(s))")
    table.add_row("Probes", f"{result.mated_probes} mated, {result.nonmated_probes} non-mated")
    table.add_row("Tolerance", f"{result.tolerance:g}")
    table.add_row("Rank-1", _rate(result.rank1))
    table.add_row("FNIR", _rate(result.fnir))
    table.add_row("FPIR", _rate(result.fpir))
    table.add_row("Failures to enrol", str(len(result.failures)))
    out.print(table)
    for note in result.notes:
        out.print(f"note: {_shown(note)}")


def _print_failures(failures: Sequence[Failure]) -> None:
    for failure in failures:
        where = f" (row {failure.row})" if failure.row is not None else ""
        _error(f"{failure.photo or '-'}{where}: {failure.reason}")


@app.command()
def calibrate(
    pairs: Annotated[
        Path,
        typer.Argument(metavar="PAIRS.csv", help="CSV of file_x,file_y,same: your own people, many different-person pairs."),
    ],
    target_fmr: Annotated[
        float,
        typer.Option("--target-fmr", help="The false-match rate to meet, e.g. 0.001 (one in a thousand).", show_default=False),
    ],
    gallery: Annotated[
        Optional[Path],
        typer.Option("--gallery", "-g", envvar="CONSENTMATCH_GALLERY", show_envvar=True,
                     help="Store the tolerance in this gallery's policy (audited)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only print the tolerance; store nothing.")] = False,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Choose the tolerance that meets a target false-match rate on your own people.

    Prints the largest tolerance (in steps of 0.001) whose FMR on the pairs is at most the
    target, with the FMR and FNMR it gives, and stores it as the gallery policy's tolerance
    (unless --dry-run or no gallery is named). Warns on stderr when there are fewer than
    3/target different-person pairs: the data cannot then support the target.

    **Example:** `consentmatch calibrate pairs.csv --target-fmr 0.001 --json`
    """
    from . import evaluate as evaluation

    progress, advance = _encoding_progress()
    with _errors():
        evaluation.check_target_fmr(target_fmr)
        with progress:
            scores = evaluation.score_pairs(pairs, progress=advance)
        result = evaluation.calibrate(scores, target_fmr)
        stored = gallery is not None and not dry_run
        if stored:
            with _gallery(gallery, actor) as g:  # type: ignore[arg-type]
                g.set_policy("tolerance", result.tolerance)
    _print_failures(result.failures)
    if result.warning:
        print(f"warning: {visible(result.warning)}", file=sys.stderr, flush=True)
    if as_json:
        _json({**result.to_dict(), "stored": stored, "gallery": str(gallery) if stored else None})
        return
    if stored:
        out.print(f"Stored tolerance {result.tolerance:.3f} in the policy of {_shown(gallery)}.")
    out.print(
        f"Tolerance {result.tolerance:.3f}: FMR {result.fmr:.4f} (target {result.target_fmr:g}), "
        f"FNMR {_rate(result.fnmr)}, on {result.genuine_pairs} same-person and {result.impostor_pairs} "
        "different-person pair(s)."
    )


def main() -> None:
    """Console entry point: usage errors exit 2, and nothing ever ends in a traceback."""
    warnings.filterwarnings("ignore", category=UserWarning, module="face_recognition_models")
    # Pillow warns about corrupt EXIF and big images; the decoder already turns what matters into
    # one-line errors, so the warnings would only add noise (with file paths) to stderr.
    warnings.filterwarnings("ignore", module="PIL")
    try:
        app()
    except Exception as exc:  # a bug: say so in one line; the traceback only on request
        if os.environ.get("CONSENTMATCH_DEBUG"):
            raise
        _error(f"unexpected {type(exc).__name__}: {exc} (rerun with CONSENTMATCH_DEBUG=1 for a traceback)")
        sys.exit(1)
