"""Erasure and what leads to it: forget, retention and purge, the opt-out registry.

`erase` is the one owner of the erasure sequence; revoking a consent (consents.py) goes through
it too. It reaches the held search requests that name the subject (approvals.py) in the same
transaction: a pending one is closed, its probe destroyed; a result is cleared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from functools import partial

from ..errors import GalleryNotFoundError, InvalidArgumentError, SubjectNotFoundError
from ..results import Erasure, OptOut, RetentionEntry, SearchRequest
from ..storage import Transaction
from .context import Context, check_name

__all__ = ["ERASED_PENDING", "ERASED_RESULT", "add_optout", "cleared", "erase", "erase_requests", "forget", "optouts", "purge",
           "remove_optout", "retention"]

#: Why a pending request was closed as `erased` (its `decision_reason`), and why a decided one holds
#: no result any more (its `error`): neither says how the subject was erased (the audit does).
ERASED_PENDING = "Closed: the subject was erased; its probe is destroyed."
ERASED_RESULT = "Result erased: a subject it named was erased."


def erase(
    ctx: Context, find: Callable[[Transaction], int], reason: str, change: Callable[[Transaction, int, int], int],
    actor: str | None = None,
) -> Erasure:
    """The one way templates are erased. `find(tx)` names the subject's id inside the
    erasure's transaction; `change(tx, subject_id, templates)` deletes the rows and audits
    there too, returning the consents it removed; `actor` is who erases (the gallery's by default).

    Order, in one write transaction: find the subject -> read its templates (for the
    post-check) and data key id -> delete rows -> close the held search requests that name the
    subject, clear the results that name it (`erase_requests`) -> destroy that data key and
    their probes' keys as the last step -> commit; then the WAL checkpoint and the index (the
    cache follows the commit). What is read, deleted and shredded is one subject, by id: a
    forget and re-enrollment of the same name by another process cannot slip between them. A
    write the gallery refuses (read-only, locked) shreds nothing; from the shred on, no crash and
    no old copy of the gallery makes the templates or the held probes readable again (rows left
    by a crash between shred and commit are dropped at the next open; a probe of a shredded key
    does not open).

    Raises:
        SubjectNotFoundError: nobody of that name (ConsentError: no consent of that reference).
    """
    with ctx.lock:
        ctx.cache.before_erasure()  # erase from the snapshot too, so close saves it current
        with ctx.store.write() as tx:
            subject_id = find(tx)
            name = ctx.subject_name(tx, subject_id)
            ids, vectors = tx.subject_templates(subject_id, strict=False)
            key = tx.subject_key_id(subject_id)
            with tx.renewing(subject_id, strict=False):  # an erasure is never refused
                consents = change(tx, subject_id, len(ids))
            tx.erase_answers(name)  # the service's kept answers that name the subject go too
            probe_keys = erase_requests(ctx, tx, name, reason, actor)
            # Index snapshots hold the templates too: their keys go with the subject's, at once.
            tx.shred([key, *probe_keys, *sorted(ctx.store.keys.index_key_ids())])
        removed = ctx.cache.after_erasure()
        ctx.store.checkpoint()
        # The post-check: no row of the removed templates is left, and the live index finds none of them.
        verified = True
        if len(ids):
            with ctx.store.read() as tx:
                left = tx.templates_left(ids.tolist())
            verified = left == 0 and ctx.cache.finds_none(ids, vectors)
        return Erasure(subject=name, templates_removed=len(ids), index_entries_removed=removed,
                       consents_removed=consents, reason=reason, verified=verified)


def erase_requests(ctx: Context, tx: Transaction, name: str, reason: str, actor: str | None) -> list[str | None]:
    """Inside an erasure's transaction: the held search requests that name the subject give up
    what they hold of it. A pending verify of it is closed as `erased` (its probe destroyed, like a
    decision's); a result that names it (a verify's, or a match's face or candidate) is cleared,
    the whole result, with `error` saying why. Each is an audit event (`request-erase`). A row
    edited outside consentmatch loses its probe and result but is never re-sealed. Returns the
    probes' data key ids, for the erasure to shred with the subject's."""
    now, who = ctx.now(), ctx.who(actor)
    intact, edited = tx.requests_naming(name)
    keys = []
    for request in intact:
        if request.status == "pending":
            tx.update_request(replace(request, status="erased", decided_at=now,
                                      decision_reason=ERASED_PENDING))
            keys.append(tx.destroy_probe(request.request_id))
            change = "closed"
        elif request.result is not None:
            tx.update_request(cleared(tx, request, name, who, now, reason))
            continue
        else:  # a decided verify of the subject without a result (denied, expired, refused): nothing of it held
            continue
        tx.append_audit(at=now, actor=who, action="request-erase", subject=name, purpose=request.purpose,
                        details={"request": request.request_id, "requester": request.requester, "change": change,
                                 "erasure": reason})
    for request_id in edited:
        keys.append(tx.strip_request(request_id))
        tx.append_audit(at=now, actor=who, action="request-erase", subject=name,
                        details={"request": request_id, "change": "stripped", "erasure": reason})
    return keys


def cleared(tx: Transaction, request: SearchRequest, name: str, who: str, at: datetime,
            erasure: str | None = None) -> SearchRequest:
    """`request` with its result cleared (`ERASED_RESULT`) since it named the erased `name`, the
    clearing audited (`request-erase`): by an erasure (`erasure`: which), or by an approved search
    that finished after one (approvals.py)."""
    details = {"request": request.request_id, "requester": request.requester, "change": "result-cleared"}
    tx.append_audit(at=at, actor=who, action="request-erase", subject=name, purpose=request.purpose,
                    details=details | ({"erasure": erasure} if erasure else {}))
    return replace(request, result=None, error=ERASED_RESULT)


def forget(ctx: Context, subject: str, actor: str | None) -> Erasure:
    """Erase a subject: templates, consent records and index entries; the audit keeps the record that it happened."""
    name = check_name(subject, "subject name")
    now = ctx.now()

    def change(tx: Transaction, subject_id: int, removed: int) -> int:
        _, consents = tx.delete_subject(subject_id)
        tx.append_audit(at=now, actor=ctx.who(actor), action="forget", subject=name,
                        details={"templates_removed": removed, "consents_removed": consents})
        return consents

    return erase(ctx, lambda tx: ctx.subject_id(tx, name), "forget", change, actor)


def retention(ctx: Context) -> list[RetentionEntry]:
    """When each enrolled subject's templates must be destroyed, soonest first (no date last)."""
    if not ctx.store.exists():
        return []
    now = ctx.now()
    with ctx.lock, ctx.store.read() as tx:
        rows = tx.retention()
    entries = [
        RetentionEntry(subject=n, templates=c, destroy_by=d, rule=r, overdue=d is not None and d <= now)
        for _, n, c, d, r in rows
    ]
    far = datetime.max.replace(tzinfo=timezone.utc)
    return sorted(entries, key=lambda e: (e.destroy_by or far, e.subject))


def purge(ctx: Context, actor: str | None) -> list[Erasure]:
    """Destroy the templates of every subject past their retention date."""
    if not ctx.store.exists():
        return []
    receipts = []
    for entry in retention(ctx):
        if not entry.overdue:
            continue
        now, due = ctx.now(), entry

        def change(tx: Transaction, subject_id: int, removed: int) -> int:
            tx.delete_templates(subject_id)
            tx.append_audit(at=now, actor=ctx.who(actor), action="purge", subject=due.subject,
                            details={"templates_removed": removed, "rule": due.rule,
                                     "destroy_by": due.destroy_by.isoformat() if due.destroy_by else None})
            return 0

        receipts.append(erase(ctx, partial(ctx.subject_id, name=entry.subject), "purge", change, actor))
    return receipts


# -- the opt-out registry ----------------------------------------------------------------


def add_optout(ctx: Context, subject: str | None, email: str | None, actor: str | None) -> list[Erasure]:
    """Put a subject or an e-mail (as keyed hashes) on the do-not-enroll list; revoke the consents
    and erase the templates of everyone it names. One receipt per subject erased."""
    kind, value = _optout_key(ctx, subject, email, create=True)
    now = ctx.now()
    receipts = []
    with ctx.lock:
        with ctx.store.write(create=True) as tx:
            tx.add_optout(kind, _optout_values(tx, kind, value)[0], now)
            hashes = tx.email_hashes(value) if kind == "email" else []
            names = [value] if kind == "subject" else tx.subjects_with_email(hashes)
            tx.append_audit(at=now, actor=ctx.who(actor), action="optout-add",
                            subject=value if kind == "subject" else None, details={"kind": kind, "erases": names})

        def opt_out(tx: Transaction, subject_id: int, removed: int) -> int:
            tx.revoke_all(subject_id, now)
            tx.delete_templates(subject_id)
            ctx.refresh_retention(tx, subject_id, now)
            return 0

        for name in names:
            try:
                receipts.append(erase(ctx, partial(ctx.subject_id, name=name), "optout", opt_out, actor))
            except SubjectNotFoundError:  # named by the e-mail's consent, already forgotten
                continue
    return receipts


def remove_optout(ctx: Context, subject: str | None, email: str | None, actor: str | None) -> bool:
    """Take an entry off the do-not-enroll list; False if it was not there."""
    kind, value = _optout_key(ctx, subject, email, create=False)
    with ctx.lock, ctx.store.write() as tx:
        removed = any([tx.remove_optout(kind, v) for v in _optout_values(tx, kind, value)])
        tx.append_audit(at=ctx.now(), actor=ctx.who(actor), action="optout-remove",
                        subject=value if kind == "subject" else None, details={"kind": kind, "removed": removed})
    return removed


def optouts(ctx: Context) -> list[OptOut]:
    """The do-not-enroll list: subject references, and e-mails as hashes."""
    if not ctx.store.exists():
        return []
    with ctx.lock, ctx.store.read() as tx:
        return [OptOut(kind=k, value=v, added_at=a) for k, v, a in tx.optouts()]


def _optout_key(ctx: Context, subject: str | None, email: str | None, *, create: bool) -> tuple[str, str]:
    if (subject is None) == (email is None):
        raise InvalidArgumentError("Give exactly one of a subject or an e-mail (CLI: --subject S or --email E).")
    if subject is not None:
        return "subject", check_name(subject, "subject name")
    address = (email or "").strip().lower()
    if "@" not in address or len(address) > 320:
        raise InvalidArgumentError(f"{email!r} is not an e-mail address.")
    if not create and not ctx.store.exists():
        raise GalleryNotFoundError(f"No gallery at '{ctx.path}'.")
    return "email", address


def _optout_values(tx: Transaction, kind: str, value: str) -> list[str]:
    """What the registry holds for an entry: the subject, or the e-mail's hashes (the one stored now first)."""
    return tx.email_hashes(value) if kind == "email" else [value]
