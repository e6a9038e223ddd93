"""Governance: the policy, the declared purposes, the audit trail and its check, subject access, the keys, the subject list."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..consent import check_purpose, utc
from ..crypto import parse_key
from ..errors import InvalidArgumentError, SubjectNotFoundError
from ..policy import default_policy, parse_policy_value
from ..results import AuditCheck, AuditEvent, KeyInfo, PurposeInfo, SubjectInfo
from ..storage import Transaction
from .context import Context, check_name

__all__ = [
    "audit", "declare_purpose", "export", "key_info", "policy", "purposes", "remove_purpose", "rotate_key", "set_policy",
    "subjects", "verify_audit",
]


def policy(ctx: Context) -> dict[str, Any]:
    """The gallery's policy (the defaults while no gallery file exists)."""
    if not ctx.store.exists():
        return default_policy(ctx.settings.quality)
    with ctx.lock, ctx.store.read() as tx:
        return tx.policy()


def set_policy(ctx: Context, key: str, value: Any, actor: str | None) -> dict[str, Any]:
    """Change one policy key (parsed as the CLI gives it) and audit the change; returns the new policy."""
    parsed = parse_policy_value(key, value)
    with ctx.lock, ctx.store.write(create=True) as tx:
        policy = tx.policy()
        old = policy[key]
        new = {**policy, key: parsed}
        if new["max_tolerance"] is not None and new["tolerance"] > new["max_tolerance"]:
            # the default search must stay within the cap, or every search would be refused
            raise InvalidArgumentError(
                f"The policy's tolerance {new['tolerance']:g} would be over its max_tolerance "
                f"{new['max_tolerance']:g}: change the one with the other (or set max_tolerance null)."
            )
        tx.set_policy(key, parsed)
        tx.append_audit(at=ctx.now(), actor=ctx.who(actor), action="policy-set",
                        details={"key": key, "old": old, "new": parsed})
        return tx.policy()


def declare_purpose(ctx: Context, name: str, actor: str | None) -> PurposeInfo:
    """Declare a purpose the gallery serves (audited when new); declaring it again changes nothing."""
    label = check_purpose(name)
    now = ctx.now()
    with ctx.lock, ctx.store.write(create=True) as tx:
        if tx.declare_purpose(label, now):
            tx.append_audit(at=now, actor=ctx.who(actor), action="purpose-add", purpose=label)
        return _purpose(tx, label, now)


def remove_purpose(ctx: Context, name: str, actor: str | None) -> bool:
    """Withdraw a declared purpose no consent lists (audited); False when it was not declared."""
    label = check_purpose(name)
    now = ctx.now()
    if not ctx.store.exists():
        return False
    with ctx.lock, ctx.store.write() as tx:
        listed = next((p for p in tx.purposes(now) if p[0] == label), None)
        if listed is None:
            return False
        if listed[3]:
            raise InvalidArgumentError(
                f"Purpose '{label}' is listed by {listed[3]} consent(s) ({listed[2]} active): it stays declared "
                "while they exist; revoke them first (`consentmatch consent list`)."
            )
        tx.remove_purpose(label)
        tx.append_audit(at=now, actor=ctx.who(actor), action="purpose-remove", purpose=label)
        return True


def purposes(ctx: Context) -> list[PurposeInfo]:
    """The declared purposes by name, each with how many active consents cover it."""
    if not ctx.store.exists():
        return []
    now = ctx.now()
    with ctx.lock, ctx.store.read() as tx:
        approval = set(tx.policy()["approval_purposes"])
        return [PurposeInfo(*row, needs_approval=row[0] in approval) for row in tx.purposes(now)]


def _purpose(tx: Transaction, label: str, now: datetime) -> PurposeInfo:
    return next(PurposeInfo(*row) for row in tx.purposes(now) if row[0] == label)


def audit(
    ctx: Context, subject: str | None, *, actor: str | None = None, action: str | None = None,
    purpose: str | None = None, since: datetime | None = None, until: datetime | None = None,
) -> list[AuditEvent]:
    """The audit trail, oldest first: all of it, or the events matching every filter given
    (`since`/`until` inclusive; a naive time is UTC)."""
    if not ctx.store.exists():
        return []
    with ctx.lock, ctx.store.read() as tx:
        return tx.audit_events(subject, actor=actor, action=action, purpose=purpose,
                               since=utc(since) if since is not None else None,
                               until=utc(until) if until is not None else None)


def verify_audit(ctx: Context) -> AuditCheck:
    """The hash chain walked, then every subject, consent and template checked against its MAC or
    sealed binding: a row edited outside consentmatch fails the check too (`problem` names it)."""
    with ctx.lock, ctx.store.read() as tx:
        check = tx.verify_audit()
        row = tx.check_all() if check.intact else None
    if row is not None:
        return AuditCheck(False, check.events, check.head,
                          problem=f"{row} fails its integrity check (edited outside consentmatch)")
    return check


def export(ctx: Context, subject: str, actor: str | None) -> dict[str, Any]:
    """A subject access bundle (no embeddings); the export itself is audited."""
    name = check_name(subject, "subject name")
    now = ctx.now()
    with ctx.lock, ctx.store.write() as tx:
        subject_id = tx.subject_id(name)
        if subject_id is None and not tx.audit_events(name):
            raise SubjectNotFoundError(f"Nothing is held about '{name}' in this gallery.")
        tx.append_audit(at=now, actor=ctx.who(actor), action="export", subject=name)
        retention = next((r for r in tx.retention() if r[0] == subject_id), None)
        return {
            "subject": name,
            "exported_at": now.isoformat(),
            "gallery": str(ctx.path),
            "consents": [c.to_dict() for c in tx.consent_records(now, subject_id=subject_id)]
            if subject_id is not None else [],
            "templates": tx.template_rows(subject_id) if subject_id is not None else [],
            "retention": {"destroy_by": retention[3].isoformat() if retention and retention[3] else None,
                          "rule": retention[4] if retention else None},
            "audit": [e.to_dict() for e in tx.audit_events(name)],
        }


def key_info(ctx: Context) -> KeyInfo:
    """Where the gallery's keys are and how many subject data keys exist (never the keys)."""
    with ctx.lock, ctx.store.read():
        return _key_info(ctx)


def rotate_key(ctx: Context, new_key: bytes | str | None, actor: str | None) -> KeyInfo:
    """Re-wrap every subject's data key under a new gallery key, audited in the same transaction."""
    fresh = parse_key(new_key, "new_key") if new_key is not None else None
    with ctx.lock:
        with ctx.store.write() as tx:
            keys = ctx.store.keys
            # The event is kept in the key store with the rotation until this transaction
            # commits: a crash in between leaves it for the next open to record (Store._open_keys).
            event = tx.rotation_event(ctx.now(), ctx.who(actor), len(keys.key_ids()), keys.source)
            keys.rotate(fresh, record=event)
            tx.record_rotation(event)
        keys.rotation_recorded(event)
        return _key_info(ctx)


def subjects(ctx: Context) -> list[SubjectInfo]:
    """Everyone enrolled, by name, with template count and consents (never templates)."""
    if not ctx.store.exists():
        return []
    with ctx.lock, ctx.store.read() as tx:
        return tx.subjects(ctx.now())


def _key_info(ctx: Context) -> KeyInfo:
    keys = ctx.store.keys
    return KeyInfo(gallery_id=keys.gallery_id or "", key_source=keys.source, key_dir=keys.keys_at or str(keys.key_dir),
                   data_keys=len(keys.key_ids()))
