"""Department approval: searches for a purpose in the policy's `approval_purposes` (e.g.
law-enforcement) run only once an approver other than the requester approves them.

request -> (held: the probe sealed under a data key of its own, a case reference and a reason)
        -> approve: the search runs under the requester's name, its result kept for the
           requester only; or deny; or, unanswered, expire after `request_ttl_hours`
        -> the probe destroyed (its data key shredded) whatever the outcome.
Every step is an audit event; an expired request is found and closed by whoever looks next.
Erasing the subject a request names (services/erasure.py) closes it while pending (status
erased, the probe destroyed) and clears the result of a decided one that names the subject.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

from ..errors import InvalidArgumentError, PermissionDeniedError, RequestNotFoundError
from ..images import PhotoInput, Upload, load_photo, photo_bytes
from ..policy import DEFAULT_TOP_K, PROBE_MIN_FACE_PX, check_policy_top_k, check_top_k
from ..results import SearchRequest
from ..storage import Transaction
from ..text import check_text
from . import matching
from .context import REFUSALS, Context, check_name
from .erasure import cleared

__all__ = ["OVERSEERS", "decide", "oversees", "request_probe", "request_search", "search_request", "search_requests"]

STATUSES = ("pending", "approved", "denied", "expired", "erased")
#: The roles that see every request (an approver's queue, an auditor's review); any other reader
#: sees only the requests they filed.
OVERSEERS = ("approver", "auditor")


def oversees(roles: Sequence[str]) -> bool:
    """Whether a key with `roles` sees every request, not only its own."""
    return any(role in OVERSEERS for role in roles)


def request_search(
    ctx: Context, kind: str, photo: PhotoInput, *, purpose: str, case_ref: str, reason: str,
    subject: str | None = None, tolerance: float | None = None, top_k: int | None = None, requester: str | None = None,
) -> SearchRequest:
    """Hold a match (kind "match") or verify ("verify") for a purpose that needs approval."""
    if kind not in ("match", "verify"):
        raise InvalidArgumentError(f"A search request is a match or a verify, not {kind!r}.")
    case_ref, reason = check_text(case_ref, "case reference"), check_text(reason, "reason")
    name = check_name(subject, "subject name") if kind == "verify" and subject is not None else None
    if kind == "verify" and name is None:
        raise InvalidArgumentError("A verify request names the subject the probe is checked against.")
    label, checked_tolerance, policy = matching.search_terms(ctx, purpose, tolerance, approved=True)
    assert label is not None
    if label not in policy["approval_purposes"]:
        raise InvalidArgumentError(f"Purpose '{label}' needs no approval: search directly (approval_purposes: "
                                   f"{', '.join(policy['approval_purposes']) or 'none'}).")
    if top_k is not None:
        check_policy_top_k(check_top_k(top_k), policy)
    who = ctx.who(requester)
    with ctx.refusals("request", name, label, requester):
        data = photo_bytes(photo)
        load_photo(data)  # a photo that cannot be read is refused now, not after an approver's time
    now = ctx.now()
    request = SearchRequest(
        request_id=f"req_{secrets.token_hex(8)}", kind=kind, status="pending", requester=who, purpose=label,
        subject=name, case_ref=case_ref, reason=reason, created_at=now,
        expires_at=now + timedelta(hours=int(policy["request_ttl_hours"])),
        tolerance=None if tolerance is None else checked_tolerance, top_k=top_k,
    )
    with ctx.lock, ctx.store.write(bump=False) as tx:
        tx.add_request(request, bytes(data))  # plain bytes to the store (an Upload's name is not kept)
        tx.append_audit(at=now, actor=who, action="request", subject=name, purpose=label,
                        details={"request": request.request_id, "kind": kind, "case_ref": case_ref, "reason": reason})
    return request


def search_requests(ctx: Context, status: str | None = None, requester: str | None = None) -> list[SearchRequest]:
    """Requests, oldest first (all, or of one status; only `requester`'s when given), overdue ones
    closed first; results left out."""
    if status is not None and status not in STATUSES:
        raise InvalidArgumentError(f"Unknown request status {status!r}: use one of {', '.join(STATUSES)}.")
    if not ctx.store.exists():
        return []
    _expire(ctx)
    with ctx.lock, ctx.store.read() as tx:
        found = tx.search_requests(status=status)
    return [replace(r, result=None) for r in found if requester is None or r.requester == requester]


def search_request(
    ctx: Context, request_id: str, *, reader: str | None = None, own_only: bool = False
) -> SearchRequest:
    """One request; its result only when `reader` is its requester (None: the gallery's actor).
    `own_only`: another's request is not found (a reader who oversees none, e.g. an operator)."""
    request = _find(ctx, request_id)
    if own_only and request.requester != ctx.who(reader):
        raise _not_found(request_id)  # the words of an unknown id: they tell no one another's request exists
    return request if request.requester == ctx.who(reader) else replace(request, result=None)


def request_probe(ctx: Context, request_id: str) -> bytes:
    """The probe of a pending request, for the approver deciding it; gone once it is decided."""
    request = _find(ctx, request_id)
    with ctx.lock, ctx.store.read() as tx:
        probe = tx.request_probe(request.request_id) if request.status == "pending" else None
    if probe is None:
        raise RequestNotFoundError(f"Request '{request_id}' holds no probe: it was {request.status}, and its probe "
                                   "destroyed.")
    return probe


def decide(ctx: Context, request_id: str, *, approve: bool, reason: str, approver: str | None) -> SearchRequest:
    """Approve (the search runs now, for the requester) or deny a pending request; the probe is
    destroyed either way. The requester may not decide their own request."""
    reason = check_text(reason, "reason")
    who = ctx.who(approver)
    request = _find(ctx, request_id)  # unknown ids refused, overdue requests closed first
    action = "request-approve" if approve else "request-deny"
    try:
        with ctx.lock, ctx.store.write(bump=False) as tx:  # decided once: a second approver finds it decided
            current = tx.search_requests(request_id=request.request_id)[0]
            if current.status != "pending":
                raise InvalidArgumentError(f"Request '{request_id}' is {current.status}, no longer pending: "
                                           "nothing to decide.")
            if current.requester == who:
                raise PermissionDeniedError(f"'{who}' filed request '{request_id}': another approver must decide it.")
            probe = tx.request_probe(request.request_id)
            decided = replace(current, status="approved" if approve else "denied", decided_by=who, decided_at=ctx.now(),
                              decision_reason=reason)
            tx.update_request(decided)
            # The probe leaves the store with the decision: a crash after this commit loses at most
            # the result, never leaves a probe behind.
            tx.shred([tx.destroy_probe(request.request_id)])
            tx.append_audit(at=ctx.now(), actor=who, action=action, subject=current.subject, purpose=current.purpose,
                            details={"request": current.request_id, "requester": current.requester, "reason": reason})
    except PermissionDeniedError as exc:  # deciding one's own request: a refusal on the record
        ctx.record_refusal(action, request.subject, request.purpose, who, exc, {"request": request.request_id})
        raise
    if approve and probe is not None:
        decided = _run(ctx, decided, probe)
        with ctx.lock, ctx.store.write(bump=False) as tx:
            decided = _unless_erased(ctx, tx, decided, who)
            tx.update_request(decided)
    return decided


def _unless_erased(ctx: Context, tx: Transaction, request: SearchRequest, who: str) -> SearchRequest:
    """The result as it may be kept: cleared if a subject it gives a distance to was erased while
    the search ran (an erasure that commits before it finds no result to clear; one that commits
    after clears it itself)."""
    for name in sorted(request.result_names(measured=True)):
        subject_id = tx.subject_id(name)
        if subject_id is None or tx.template_count(subject_id) == 0:
            return cleared(tx, request, name, who, ctx.now())
    return request


def _run(ctx: Context, request: SearchRequest, probe: bytes) -> SearchRequest:
    """The approved search, under the requester's name (audited as theirs, like any search); the
    held probe is named by its request."""
    probe = Upload(probe, f"{request.request_id} probe")
    try:
        if request.kind == "match":
            return replace(request, result=matching.match(
                ctx, probe, purpose=request.purpose, tolerance=request.tolerance, top_k=request.top_k or DEFAULT_TOP_K,
                min_face_px=PROBE_MIN_FACE_PX, actor=request.requester, approved=request).to_dict())
        assert request.subject is not None
        return replace(request, result=matching.verify(
            ctx, request.subject, probe, purpose=request.purpose, tolerance=request.tolerance,
            min_face_px=PROBE_MIN_FACE_PX, actor=request.requester, approved=request).to_dict())
    except REFUSALS as exc:  # the decision stands; the search's refusal (no face, no consent) is its answer
        return replace(request, error=str(exc))


def _not_found(request_id: str) -> RequestNotFoundError:
    """One message for an id that is unknown and for one that is another's (`own_only`)."""
    return RequestNotFoundError(f"No search request you may read has the id '{request_id}': `consentmatch request "
                                "list` (GET /v1/requests) shows them.")


def _find(ctx: Context, request_id: str) -> SearchRequest:
    missing = _not_found(request_id)
    if not ctx.store.exists():
        raise missing
    _expire(ctx)
    with ctx.lock, ctx.store.read() as tx:
        found = tx.search_requests(request_id=request_id)
    if not found:
        raise missing
    return found[0]


def _expire(ctx: Context) -> None:
    """Close every pending request past its time: status expired, probe destroyed, audited."""
    now = ctx.now()
    with ctx.lock, ctx.store.read() as tx:
        overdue = [r for r in tx.search_requests(status="pending") if r.expires_at <= now]
    if not overdue:
        return
    with ctx.lock, ctx.store.write(bump=False) as tx:
        for request in overdue:
            current = tx.search_requests(request_id=request.request_id)[0]
            if current.status != "pending":  # decided meanwhile by another process
                continue
            tx.update_request(replace(current, status="expired", decided_at=now))
            tx.shred([tx.destroy_probe(current.request_id)])
            tx.append_audit(at=now, actor=ctx.actor, action="request-expire", subject=current.subject,
                            purpose=current.purpose, details={"request": current.request_id,
                                                              "requester": current.requester})
