"""Commands over records: consents, policy, retention, opt-outs, audit, export, keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional, TYPE_CHECKING

import typer

from ..audit import bound
from ..policy import POLICY
from ..text import visible
from ..text import shown as _shown
if TYPE_CHECKING:
    from ..results import ConsentRecord

from .common import (
    print_json_lines,
    table,
    settings,
    app,
    out,
    GalleryOption,
    JsonOption,
    ActorOption,
    fail,
    mapped_errors,
    open_gallery,
    print_json,
    day,
    consent_from,
    print_erasure,
    confirm,
)

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
    with mapped_errors():
        consent = consent_from(ref, purpose, expires, jurisdiction, signer, evidence, notice_version)
        with open_gallery(gallery, actor, as_json=as_json) as g:
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
    with mapped_errors(), open_gallery(gallery, existing=True) as g:
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
    with mapped_errors(), open_gallery(gallery, existing=True) as g:
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
    confirm(yes, f"Revoke consent '{visible(ref)}' and erase the person's templates?")
    with mapped_errors(), open_gallery(gallery, actor, existing=True) as g:
        receipt = g.revoke_consent(ref)
    if as_json:
        print_json(receipt.to_dict())
    else:
        print_erasure(receipt)


def _print_consents(records: list[ConsentRecord], as_json: bool) -> None:
    if as_json:
        print_json_lines(records)
        return
    grid = table("Reference", "Subject", "Purposes", "Granted", "Expires", "Jurisdiction", "Signer", "Evidence", "State")
    for r in records:
        state = "revoked " + day(r.revoked_at) if r.revoked_at else ("active" if r.active else "inactive")
        grid.add_row(
            _shown(r.reference), _shown(r.subject), _shown(", ".join(r.purposes)), day(r.granted_at),
            day(r.expires_at), _shown(r.jurisdiction or "-"), _shown(r.signer), _shown((r.evidence_sha256 or "-")[:12]),
            state,
        )
    out.print(grid)


# -- declared purposes ----------------------------------------------------------------------

purpose_app = typer.Typer(
    help="The purposes this gallery serves: match and verify may name only these.", no_args_is_help=True
)
app.add_typer(purpose_app, name="purpose")
PurposeName = Annotated[str, typer.Argument(help="A purpose label, e.g. visitor-check-in.")]


@purpose_app.command("add")
def purpose_add(name: PurposeName, gallery: GalleryOption, actor: ActorOption = None, as_json: JsonOption = False) -> None:
    """Declare a purpose ahead of its consents (a consent's purposes declare themselves, unless
    the policy's closed_purposes is on).

    **Example:** `consentmatch purpose add visitor-check-in -g visitors.db`
    """
    with mapped_errors(), open_gallery(gallery, actor, as_json=as_json) as g:
        info = g.declare_purpose(name)
    if as_json:
        print_json(info.to_dict())
    else:
        out.print(f"Purpose '{_shown(info.purpose)}' declared: {info.active_consents} active consent(s) cover it.")


@purpose_app.command("list")
def purpose_list(gallery: GalleryOption, as_json: JsonOption = False) -> None:
    """List the declared purposes, each with how many active consents cover it (0: matches nobody).

    **Example:** `consentmatch purpose list -g visitors.db`
    """
    with mapped_errors(), open_gallery(gallery, existing=True) as g:
        infos = g.purposes()
    if as_json:
        print_json_lines(infos)
        return
    grid = table("Purpose", "Active consents", "All consents", "Declared")
    for info in infos:
        grid.add_row(_shown(info.purpose), str(info.active_consents), str(info.consents), day(info.declared_at))
    out.print(grid)


@purpose_app.command("remove")
def purpose_remove(
    name: PurposeName,
    gallery: GalleryOption,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Withdraw a declared purpose; refused while any consent lists it.

    **Example:** `consentmatch purpose remove visitor-check-in -g visitors.db --yes`
    """
    confirm(yes, f"Withdraw the purpose '{visible(name)}'? Searches for it will then be refused.",
            "Purpose kept (not confirmed): pass --yes to remove it without asking.")
    with mapped_errors(), open_gallery(gallery, actor, existing=True) as g:
        removed = g.remove_purpose(name)
    if as_json:
        print_json({"purpose": name, "removed": removed})
    else:
        out.print(f"Purpose '{_shown(name)}' removed." if removed else f"'{_shown(name)}' was not a declared purpose.")


# -- policy, retention, opt-out --------------------------------------------------------------

policy_app = typer.Typer(help=f"The gallery's policy: {', '.join(k.name for k in POLICY)}.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@policy_app.command("show")
def policy_show(gallery: GalleryOption, as_json: JsonOption = False) -> None:
    """Show the gallery's policy.

    **Example:** `consentmatch policy show -g visitors.db`
    """
    with mapped_errors(), open_gallery(gallery, existing=True) as g:
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
    with mapped_errors(), open_gallery(gallery, actor, as_json=as_json) as g:
        policy = g.set_policy(key, value)
    _print_policy(policy, as_json)


def _print_policy(policy: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(policy)
        return
    for key, value in policy.items():
        shown = (",".join(value) if isinstance(value, list) else str(value).lower() if isinstance(value, bool)
                 else "null" if value is None else value)
        out.print(f"{_shown(key)} = {_shown(shown) if shown != '' else '(none)'}")


@app.command()
def retention(gallery: GalleryOption, as_json: JsonOption = False) -> None:
    """When each person's templates must be destroyed, by jurisdiction (BIPA, CUBI, consent term).

    Overdue people are never matched; `consentmatch purge` destroys their templates.

    **Example:** `consentmatch retention -g visitors.db --json`
    """
    with mapped_errors(), open_gallery(gallery, existing=True) as g:
        entries = g.retention()
    if as_json:
        print_json_lines(entries)
        return
    grid = table("Subject", "Templates", "Destroy by", "Rule", "State")
    for e in entries:
        grid.add_row(_shown(e.subject), str(e.templates), day(e.destroy_by), _shown(e.rule),
                      "[red]overdue[/red]" if e.overdue else "ok")
    out.print(grid)


@app.command()
def purge(
    gallery: GalleryOption,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Destroy the templates of everyone past their retention date.

    When nobody is past it, says so and exits 0 without asking.

    **Example:** `consentmatch purge -g visitors.db --yes`
    """
    with mapped_errors(), open_gallery(gallery, actor, existing=True) as g:
        due = sum(entry.overdue for entry in g.retention())
        if not due:
            if not as_json:
                out.print("Nothing is due: nobody is past their retention date.")
            return
        confirm(yes, f"Destroy the templates of {due} subject(s) past their retention date?")
        receipts = g.purge()
    if as_json:
        print_json_lines(receipts)
        return
    for receipt in receipts:
        print_erasure(receipt)
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
    with mapped_errors(), open_gallery(gallery, actor, as_json=as_json) as g:
        receipts = g.add_optout(subject=subject, email=email)
    if as_json:
        print_json({"added": True, "erased": [r.to_dict() for r in receipts]})
        return
    out.print("Opt-out recorded.")
    for receipt in receipts:
        print_erasure(receipt)


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
    with mapped_errors(), open_gallery(gallery, actor, existing=True) as g:
        removed = g.remove_optout(subject=subject, email=email)
    if as_json:
        print_json({"removed": removed})
    else:
        out.print("Opt-out removed." if removed else "No such opt-out.")


@optout_app.command("list")
def optout_list(gallery: GalleryOption, as_json: JsonOption = False) -> None:
    """List the do-not-enroll registry (e-mails appear as hashes).

    **Example:** `consentmatch optout list -g visitors.db`
    """
    with mapped_errors(), open_gallery(gallery, existing=True) as g:
        entries = g.optouts()
    if as_json:
        print_json_lines(entries)
        return
    grid = table("Kind", "Value", "Added")
    for entry in entries:
        grid.add_row(_shown(entry.kind), _shown(entry.value), day(entry.added_at))
    out.print(grid)
    out.print(f"{len(entries)} opt-out(s).")  # an empty table alone reads like a failure


# -- audit and subject access ----------------------------------------------------------------


@app.command("audit")
def audit_(
    gallery: GalleryOption,
    subject: Annotated[Optional[str], typer.Option("--subject", "-s", help="Only events naming this person (searches that showed them included).")] = None,
    actor: Annotated[Optional[str], typer.Option("--actor", help="Only events by this actor.")] = None,
    action: Annotated[Optional[str], typer.Option("--action", help="Only events of this action: match, verify, enroll, ...")] = None,
    purpose: Annotated[Optional[str], typer.Option("--purpose", "-p", help="Only events for this purpose.")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="Only events at or after: YYYY-MM-DD (00:00 UTC) or an ISO time (UTC unless it names a zone).")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Only events at or before: YYYY-MM-DD (through that whole day, UTC) or an ISO time.")] = None,
    check: Annotated[bool, typer.Option("--verify", help="Walk the hash chain and check every record: exit 0 intact, 1 broken.")] = False,
    as_json: JsonOption = False,
) -> None:
    """The audit trail: who did what, when, for which purpose. Never an image or an embedding.

    The filters combine (every one given must hold); --json gives each event's seq and hash.
    With --verify, walks the hash chain and names the first edited, deleted or inserted event,
    then checks every subject, consent and template for edits made outside consentmatch.

    **Example:** `consentmatch audit -g visitors.db --action key-rotate --since 2026-01-01 --json`
    """
    with mapped_errors():  # the HTTP API reads them the same way (audit.bound)
        start, end = bound(since, "--since"), bound(until, "--until", end_of_day=True)
    with mapped_errors(), open_gallery(gallery, existing=True) as g:
        if check:
            result = g.verify_audit()
        else:
            events = g.audit(subject, actor=actor, action=action, purpose=purpose, since=start, until=end)
    if check:
        if as_json:
            print_json(result.to_dict())
        elif result.intact:
            out.print(f"Audit trail intact: {result.events} event(s), head {_shown(result.head)}.")
        if not result.intact and result.broken_at is None:  # the chain holds, a subject or consent row does not
            fail(f"Gallery tampered: {result.problem}: restore the gallery from a backup.")
        if not result.intact:
            fail(f"Audit trail broken at event {result.broken_at}: {result.problem}.")
        return
    if as_json:
        print_json_lines(events)
        return
    grid = table("#", "When (UTC)", "Actor", "Action", "Subject", "Purpose", "Details")
    for e in events:
        details = ", ".join(f"{k}={v}" for k, v in e.details.items())
        grid.add_row(str(e.seq), f"{e.at:%Y-%m-%d %H:%M:%S}", _shown(e.actor), _shown(e.action), _shown(e.subject or "-"),
                      _shown(e.purpose or "-"), _shown(details))
    out.print(grid)


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
    with mapped_errors(), open_gallery(gallery, actor, existing=True) as g:
        bundle = g.export(subject)
    text = json.dumps(bundle, indent=2, ensure_ascii=False)
    if output is None:
        print(text)
        return
    try:
        output.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        fail(f"Cannot write '{output}' ({exc.strerror or exc}).")
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
    with mapped_errors(), open_gallery(gallery, existing=True) as g:
        info = g.key_info()
    if as_json:
        print_json(info.to_dict())
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
    from ..crypto import generate_key, write_private

    new_key = None
    if settings().key:
        if new_key_file is None:
            fail("The gallery key comes from CONSENTMATCH_KEY: pass --new-key-file FILE to receive the new one.", 2)
        new_key = generate_key()
        try:
            write_private(new_key_file, new_key.encode())  # stored before any data key is re-wrapped
        except OSError as exc:
            fail(f"Cannot write '{new_key_file}' ({exc.strerror or exc}): nothing rotated.")
    with mapped_errors(), open_gallery(gallery, actor, existing=True) as g:
        info = g.rotate_key(new_key=new_key)
    if as_json:
        print_json({**info.to_dict(), "new_key_file": str(new_key_file) if new_key else None})
    else:
        where = f"; the new key is in {_shown(new_key_file)}: put it in CONSENTMATCH_KEY" if new_key else ""
        out.print(f"Rotated the gallery key: {info.data_keys} data key(s) re-wrapped{where}.")


@key_app.command("generate")
def key_generate() -> None:
    """Print a new random gallery key (64 hex digits) for CONSENTMATCH_KEY or a key file.

    **Example:** `export CONSENTMATCH_KEY=$(consentmatch key generate)`
    """
    from ..crypto import generate_key

    print(generate_key())
