"""Consent records: grant, read, revoke; and the consent checks an enrollment makes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from ..consent import Consent
from ..errors import ConsentError
from ..policy import EVIDENCE_REQUIRED
from ..results import ConsentRecord, Erasure
from ..storage import Transaction, reference_taken, unknown_reference
from .context import Context, check_declared, check_name, check_new_name
from .erasure import erase

__all__ = [
    "check_consent", "check_enrollable", "check_new_subject", "check_purposes", "consent", "consents", "existing_consent", "grant_consent", "record",
    "revoke_consent",
]


def grant_consent(ctx: Context, subject: str, consent: Consent, email: str | None, actor: str | None) -> ConsentRecord:
    """Record a consent before (or without) enrolling photos; the e-mail is kept only as a keyed hash."""
    name = check_name(subject, "subject name")
    now = ctx.now()
    check_consent(consent, now)
    with ctx.lock, ctx.store.write(create=True) as tx:
        hashes = tx.email_hashes(email) if email else []
        if tx.is_opted_out(name, hashes):
            raise ConsentError(f"'{name}' is on the do-not-enroll list (opt-out): no consent can be recorded for them.")
        check_new_subject(tx, name)
        check_purposes(tx, consent, now)
        record(ctx, tx, name, consent, hashes, now, ctx.who(actor))
        (granted,) = tx.consent_records(now, reference=consent.reference)
    return granted


def consent(ctx: Context, reference: str) -> ConsentRecord:
    """One consent record by its reference."""
    with ctx.lock, ctx.store.read() as tx:
        records = tx.consent_records(ctx.now(), reference=reference)
    if not records:
        raise unknown_reference(reference)
    return records[0]


def consents(ctx: Context, subject: str | None) -> list[ConsentRecord]:
    """Consent records, revoked ones included (as tombstones), of everyone or one subject."""
    if not ctx.store.exists():
        return []
    with ctx.lock, ctx.store.read() as tx:
        subject_id = ctx.subject_id(tx, check_name(subject, "subject name")) if subject else None
        return tx.consent_records(ctx.now(), subject_id=subject_id)


def revoke_consent(ctx: Context, reference: str, actor: str | None) -> Erasure:
    """Revoke a consent and erase the subject's templates at once; the record stays as a tombstone. Idempotent."""
    now = ctx.now()

    def revoke(tx: Transaction, subject_id: int, removed: int) -> int:
        _, already = tx.revoke(reference, now)
        tx.delete_templates(subject_id)
        ctx.refresh_retention(tx, subject_id, now)
        tx.append_audit(at=now, actor=ctx.who(actor), action="consent-revoke",
                        subject=ctx.subject_name(tx, subject_id),
                        details={"consent": reference, "templates_removed": removed, "already_revoked": already})
        return 0

    def owner(tx: Transaction) -> int:
        name = tx.consent_owner(reference)
        if name is None:
            raise unknown_reference(reference)
        return ctx.subject_id(tx, name)

    return erase(ctx, owner, "revoke", revoke, actor)


# -- the checks and the record an enrollment makes ---------------------------------------


def check_consent(consent: Consent, now: datetime) -> None:
    """A new consent is current and carries the evidence its jurisdiction requires."""
    if not consent.is_active(now):
        raise ConsentError(
            f"Consent '{consent.reference}' expired on {consent.expires_at:%Y-%m-%d}: record a current consent first."
        )
    statute = EVIDENCE_REQUIRED.get(consent.jurisdiction or "")
    if statute and not consent.evidence_sha256:
        raise ConsentError(
            f"Consent '{consent.reference}' ({consent.jurisdiction}) needs a written release under {statute}: "
            "give the signed release as evidence (CLI: --evidence FILE; a manifest: its evidence column; Python: "
            "Consent(evidence_sha256=evidence_digest(FILE))); only its SHA-256 is kept."
        )


def check_enrollable(
    ctx: Context, tx: Transaction, name: str, consent: Consent | str, email: str | None, now: datetime
) -> list[str]:
    """The subject is not opted out and the consent may be used for them; returns the e-mail's hashes."""
    check_new_subject(tx, name)
    hashes = tx.email_hashes(email) if email else []
    if tx.is_opted_out(name, hashes):
        raise ConsentError(
            f"'{name}' is on the do-not-enroll list (opt-out): they may not be enrolled; "
            "only their own request can remove the opt-out."
        )
    if isinstance(consent, str):
        existing_consent(ctx, tx, name, consent, now)
    else:
        owner = tx.consent_owner(consent.reference)
        if owner is not None and owner != name:
            raise reference_taken(consent.reference, owner)
        check_purposes(tx, consent, now)
    return hashes


def check_new_subject(tx: Transaction, name: str) -> None:
    """A subject about to be created has a name a URL can carry (`check_new_name`); one enrolled
    before that rule keeps its name."""
    if ("/" in name or name in (".", "..")) and tx.subject_id(name) is None:
        check_new_name(name, "subject name")


def check_purposes(tx: Transaction, consent: Consent, now: datetime) -> None:
    """Under the policy's `closed_purposes`, a new consent may list only declared purposes."""
    if tx.policy()["closed_purposes"]:
        for purpose in consent.purposes:
            check_declared(tx, purpose, now, ConsentError,
                           f"declare it first (`consentmatch purpose add {purpose}`): the policy's closed_purposes is on.")


def existing_consent(ctx: Context, tx: Transaction, name: str, reference: str, now: datetime) -> tuple[int, int, str]:
    """A recorded, active consent of this subject by its reference: (subject id, consent id, reference)."""
    records = tx.consent_records(now, reference=reference)
    if not records:
        raise unknown_reference(reference, to_enroll=True)
    if records[0].subject != name:
        raise reference_taken(reference, records[0].subject)
    if not records[0].active:
        state = "was revoked" if records[0].revoked_at else "is not active (expired or past retention)"
        raise ConsentError(f"Consent '{reference}' {state}: record a current consent first.")
    subject_id = ctx.subject_id(tx, name)
    consent_id = tx.consent_id(reference)
    assert consent_id is not None  # its record was just read in this transaction
    return subject_id, consent_id, reference


def record(
    ctx: Context, tx: Transaction, name: str, consent: Consent, hashes: Sequence[str], now: datetime, actor: str
) -> tuple[int, int]:
    """Record a consent (its subject checked against the opt-outs already) and audit it; returns
    (subject id, consent id). `hashes`: the subject's e-mail hashes, the one to store first.
    Its purposes declare themselves (unless declared already): existing scripts keep working."""
    with recording(ctx, tx, name, consent, hashes, now, actor) as ids:
        return ids


@contextmanager
def recording(
    ctx: Context, tx: Transaction, name: str, consent: Consent, hashes: Sequence[str], now: datetime, actor: str
) -> Iterator[tuple[int, int]]:
    """`record`, around a block that writes more of the subject's rows (an enrollment's templates):
    the MACs are renewed and the retention worked out once, after both."""
    for purpose in consent.purposes:
        tx.declare_purpose(purpose, now)
    subject_id = tx.ensure_subject(name, now)
    with tx.renewing(subject_id, strict=True):
        consent_id = tx.record_consent(subject_id, consent, now, hashes[0] if hashes else None)
        yield subject_id, consent_id
        ctx.refresh_retention(tx, subject_id, now)
    tx.append_audit(at=now, actor=actor, action="consent-grant", subject=name, details={
        "consent": consent.reference, "purposes": list(consent.purposes), "jurisdiction": consent.jurisdiction,
        "expires_at": consent.expires_at.isoformat() if consent.expires_at else None, "signer": consent.signer,
        "evidence_sha256": consent.evidence_sha256, "notice_version": consent.notice_version,
    })
