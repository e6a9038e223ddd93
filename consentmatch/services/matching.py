"""Search: 1:N (`match`, `match_many`) and 1:1 (`verify`).

match: decode -> detect -> encode -> index search among consented templates -> store lookup
       -> decide -> audit. Several probes: the photo work on a thread pool, a few ahead; the
       searches, decisions and audit events in input order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from .._version import __version__
from ..consent import check_purpose
from ..errors import (ApprovalRequiredError, FaceError, GalleryNotFoundError, ImageError, InvalidArgumentError,
                      NoActiveEnrollmentError)
from ..images import PhotoInput, load_photo, photo_name
from ..policy import check_min_face, check_policy_tolerance, check_policy_top_k, check_tolerance, check_top_k
from ..pool import pooled
from ..quality import check_quality, single_face
from ..results import Candidate, FaceMatch, MatchResult, SearchRequest, Verification
from ..storage import Transaction
from ..vision.types import DetectedFace
from .context import Context, check_declared, check_name

__all__ = ["match", "match_many", "search_terms", "verify"]


def match(
    ctx: Context, photo: PhotoInput, *, purpose: str | None, tolerance: float | None, top_k: int, min_face_px: int,
    actor: str | None, approved: SearchRequest | None = None,
) -> MatchResult:
    """1:N on one probe: each face's nearest consented subjects, named within the tolerance.
    `approved`: the request an approver approved, whose search this is (services/approvals.py):
    its id and case reference go into the search's audit event."""
    top_k, min_face_px = check_top_k(top_k), check_min_face(min_face_px)
    label, tolerance, policy = search_terms(ctx, purpose, tolerance, approved=approved is not None,
                                            refused=("match", None, actor))
    top_k = check_policy_top_k(top_k, policy)
    with ctx.refusals("match", None, label, actor):
        probed = _probe(ctx, photo, min_face_px)
    return _decide(ctx, *probed, label, tolerance, policy, top_k, actor, approved)


def _approval(request: SearchRequest | None) -> dict[str, str]:
    """An approved search's audit details: the request it ran for and its case reference."""
    return {} if request is None else {"request": request.request_id, "case_ref": request.case_ref}


def match_many(
    ctx: Context, photos: Sequence[PhotoInput] | PhotoInput, *, purpose: str | None, tolerance: float | None,
    top_k: int, min_face_px: int, actor: str | None,
) -> Iterator[MatchResult]:
    """`match` on each probe, the terms checked once at the call (not when iterated)."""
    top_k, min_face_px = check_top_k(top_k), check_min_face(min_face_px)
    label, tolerance, policy = search_terms(ctx, purpose, tolerance, refused=("match", None, actor))
    top_k = check_policy_top_k(top_k, policy)
    batch = [photos] if isinstance(photos, (str, bytes, os.PathLike)) else list(photos)
    return _matches(ctx, batch, label, tolerance, policy, top_k, min_face_px, actor)


def _matches(
    ctx: Context, photos: list[PhotoInput], label: str | None, tolerance: float, policy: dict[str, Any], top_k: int,
    min_face_px: int, actor: str | None,
) -> Iterator[MatchResult]:
    with pooled(photos, lambda pool, p: pool.submit(_probe, ctx, p, min_face_px), ctx.encoder) as started:
        for number, (photo, probed) in enumerate(started):
            if number == 0:  # while the first photos are read: the index and who may be searched
                with ctx.lock, ctx.store.read() as tx:
                    ctx.cache.search_state(tx, label, ctx.now())
            try:
                name, sha256, faces = probed.result()
            except (ImageError, FaceError) as exc:
                ctx.record_refusal("match", None, label, actor, exc)
                yield MatchResult(image=photo_name(photo), faces=(), purpose=label or "", tolerance=tolerance,
                                  error=str(exc))
                continue
            yield _decide(ctx, name, sha256, faces, label, tolerance, policy, top_k, actor)


def _probe(ctx: Context, photo: PhotoInput, min_face_px: int) -> tuple[str, str, list[DetectedFace]]:
    """A probe's name, SHA-256 and faces: the photo work of a match, safe on any thread."""
    decoded = load_photo(photo)
    return decoded.name, decoded.sha256, ctx.encoder.encode(decoded, min_face_px)


def _decide(
    ctx: Context, name: str, sha256: str, faces: list[DetectedFace], label: str | None, tolerance: float,
    policy: dict[str, Any], top_k: int, actor: str | None, approved: SearchRequest | None = None,
) -> MatchResult:
    """Search the probe's faces among the consented templates, name them, and audit the search."""
    with ctx.lock, ctx.store.read() as tx:
        index, searchable = ctx.cache.search_state(tx, label, ctx.now())
        if faces and len(searchable.template_ids):
            k = min(len(searchable.template_ids), top_k * searchable.max_per_subject)
            queries = np.stack([f.encoding for f in faces])
            distances, ids = index.search(queries, k, searchable.template_ids)
            positions = np.searchsorted(searchable.template_ids, np.maximum(ids, 0))
            owners = searchable.subject_ids[np.minimum(positions, len(searchable.subject_ids) - 1)]
            nearest = [_distinct(owners[row], distances[row], ids[row], top_k) for row in range(len(faces))]
            names = tx.subject_names(sorted({s for row in nearest for s, _, _ in row}))
            # Each subject shown, as consentmatch wrote it (name, consents, the template found):
            # a few checks per search, whatever the size of the gallery.
            tx.check_found(sorted({(s, t) for row in nearest for s, _, t in row}))
        else:
            nearest, names = [[] for _ in faces], {}
    results = []
    matched: dict[int, str] = {}
    margin = float(policy["ambiguity_margin"])
    for face, row in zip(faces, nearest):
        candidates = tuple(Candidate(names[s], _shown(d, tolerance)) for s, d, _ in row)
        within = bool(row) and row[0][1] <= tolerance
        # Two subjects nearly as close: naming either would be a guess.
        ambiguous = within and margin > 0 and len(row) > 1 and row[1][1] - row[0][1] < margin
        if within and not ambiguous:
            matched[row[0][0]] = names[row[0][0]]
        results.append(
            FaceMatch(
                box=face.box,
                subject=candidates[0].subject if within and not ambiguous else None,
                distance=candidates[0].distance if within and not ambiguous else None,
                candidates=candidates,
                ambiguous=ambiguous,
            )
        )
    shown: dict[str, float] = {}
    for candidate in (c for r in results for c in r.candidates):
        shown[candidate.subject] = min(candidate.distance, shown.get(candidate.subject, math.inf))
    seq, at = _record_search(ctx, "match", label, actor, matched,
                             {"faces": len(faces), "tolerance": tolerance, "top_k": top_k, **_approval(approved)},
                             shown=shown)
    return MatchResult(image=name, faces=tuple(results), purpose=label or "", tolerance=tolerance, at=at,
                       image_sha256=sha256, audit_event=seq, model=_model(ctx))


def verify(
    ctx: Context, subject: str, photo: PhotoInput, *, purpose: str | None, tolerance: float | None, min_face_px: int,
    actor: str | None, approved: SearchRequest | None = None,
) -> Verification:
    """1:1 against the subject's nearest template, exactly. A subject not enrolled, without templates
    or without consent for `purpose` gets the answer of a non-match (the same body, after the same
    photo work), so verify tells nobody who is enrolled; the audit trail records which it was.
    `approved`: as `match`'s."""
    name, min_face_px = check_name(subject, "subject name"), check_min_face(min_face_px)
    label, tolerance, policy = search_terms(ctx, purpose, tolerance, approved=approved is not None,
                                            refused=("verify", name, actor))
    with ctx.refusals("verify", name, label, actor):
        with ctx.lock, ctx.store.read() as tx:  # consent first: no template is read without it
            subject_id = tx.subject_id(name)
            if subject_id is not None:
                tx.check_subject(subject_id)  # its name and consents, as consentmatch wrote them
                if not _enrolled_for(ctx, tx, subject_id, label):
                    subject_id = None
        # The probe is read either way: a faceless photo or the time taken would tell otherwise.
        decoded = load_photo(photo)
        face = single_face(ctx.encoder.encode(decoded, min_face_px), decoded.name)
        if policy["quality"] != "off":
            check_quality(decoded, face, level=policy["quality"], for_enrollment=False)
        templates = np.empty((0, 128), dtype=np.float32)
        if subject_id is not None:
            with ctx.lock, ctx.store.read() as tx:  # by id: a namesake enrolled meanwhile is someone else
                _, templates = tx.subject_templates(subject_id)
    details: dict[str, Any] = {"subject": name, "match": False, "tolerance": tolerance, **_approval(approved)}
    if subject_id is None or not len(templates):
        # for the auditor only: the refusal's record, as every refusal writes it
        details.update(outcome="refused", error="NoActiveEnrollmentError", reason=str(_not_enrolled(name, label)))
        match, shown = False, {}
    else:
        distance = float(np.linalg.norm(templates - face.encoding, axis=1).min())
        match = distance <= tolerance
        details["match"], shown = match, {name: _shown(distance, tolerance)}  # the auditor sees a near miss
    matched = {subject_id: name} if match and subject_id is not None else {}
    seq, at = _record_search(ctx, "verify", label, actor, matched, details, subject=name, shown=shown)
    # Beyond the tolerance no distance is given: it would tell an enrolled name from an unknown one.
    return Verification(subject=name, image=decoded.name, match=match, distance=shown[name] if match else None,
                        tolerance=tolerance, box=face.box, at=at, image_sha256=decoded.sha256, audit_event=seq,
                        model=_model(ctx))


def _enrolled_for(ctx: Context, tx: Transaction, subject_id: int, label: str | None) -> bool:
    """Whether the subject has templates and an active consent for the purpose (None: any)."""
    purposes = tx.active_purposes(subject_id, ctx.now())
    return bool(label in purposes if label else purposes) and tx.template_count(subject_id) > 0


def _not_enrolled(name: str, purpose: str | None) -> NoActiveEnrollmentError:
    """The reason audited when verify finds no active enrollment (the caller sees a non-match)."""
    return NoActiveEnrollmentError(
        f"No active enrollment of '{name}' for purpose '{purpose or 'any'}': the subject is not enrolled, or has no "
        "active consent that lists this purpose; check the name and the purpose."
    )


def search_terms(
    ctx: Context, purpose: str | None, tolerance: float | None, *, approved: bool = False,
    refused: tuple[str, str | None, str | None] | None = None,
) -> tuple[str | None, float, dict[str, Any]]:
    """The purpose and tolerance of a search, with the policy's rules and defaults; and the policy.
    A purpose that needs approval is refused unless `approved` (ApprovalRequiredError), the
    refusal audited as `refused` says: (action, subject, actor)."""
    if not ctx.store.exists():
        raise GalleryNotFoundError(f"No gallery at '{ctx.path}': enroll someone first, or check --gallery.")
    label = check_purpose(purpose) if purpose is not None else None
    with ctx.lock, ctx.store.read() as tx:
        policy = tx.policy()
        if label is not None:
            check_declared(tx, label, ctx.now())  # a typo is a usage error, not "nobody consented"
    if purpose is None and policy["require_purpose"]:
        raise InvalidArgumentError(
            "This gallery's policy requires a purpose for every search: pass purpose=... (CLI: --purpose P)."
        )
    if label in policy["approval_purposes"] and not approved:
        error = ApprovalRequiredError(
            f"Searches for purpose '{label}' need a department's approval: file a request with a case reference and "
            "a reason (CLI: --case-ref C --reason R; HTTP: case_ref and reason), then an approver decides it."
        )
        if refused is not None:
            action, subject, actor = refused
            ctx.record_refusal(action, subject, label, actor, error)
        raise error
    checked = check_tolerance(policy["tolerance"] if tolerance is None else tolerance)
    return label, check_policy_tolerance(checked, policy), policy


def _record_search(
    ctx: Context, action: str, purpose: str | None, actor: str | None, matched: dict[int, str], details: dict[str, Any],
    *, subject: str | None = None, shown: dict[str, float],
) -> tuple[int, datetime]:
    """Audit a match or verify; the subjects it returned count as an interaction (BIPA retention).
    Returns the audit event's seq and time, for the result to cite.

    `subject`: the one the call named (verify), recorded whether or not it matched. `shown`: every
    subject the caller sees (candidates beyond the tolerance included) at its distance, recorded
    rounded to 2 decimals under details "shown", so `audit --subject` and `export` find them.
    """
    now = ctx.now()
    with ctx.lock, ctx.store.write(bump=False) as tx:
        for subject_id in matched:
            with tx.renewing(subject_id, strict=False):
                if tx.touch(subject_id, now):  # another process may have erased them meanwhile
                    ctx.refresh_retention(tx, subject_id, now)
        seq = tx.append_audit(
            at=now, actor=ctx.who(actor), action=action, purpose=purpose,
            subject=subject or (next(iter(matched.values())) if len(matched) == 1 else None),
            details={**details, "subjects": sorted(matched.values()),
                     "shown": [{"subject": s, "distance": round(d, 2)} for s, d in sorted(shown.items(), key=lambda i: i[1])]},
        )
    return seq, now


def _model(ctx: Context) -> dict[str, str]:
    """The model behind a result: the encoder (its `name` attribute, else its class name) and
    consentmatch's version (`_version.py`), which pins the encoder's weights and the index."""
    return {"encoder": str(getattr(ctx.encoder, "name", type(ctx.encoder).__name__)), "version": __version__}


def _shown(distance: float, tolerance: float) -> float:
    """A distance as results show it: exact within the tolerance; beyond it rounded up to 2
    decimals, so near misses are no fine oracle to tune a forged face against (and stay beyond)."""
    if distance <= tolerance:
        return distance
    return max(math.ceil(round(distance * 100, 6)) / 100, math.nextafter(tolerance, math.inf))


def _distinct(owners: np.ndarray, distances: np.ndarray, ids: np.ndarray, top_k: int) -> list[tuple[int, float, int]]:
    """The first `top_k` distinct subjects of a nearest-first row, each at its nearest template:
    (subject id, distance, template id)."""
    seen: dict[int, tuple[float, int]] = {}
    for owner, distance, template in zip(owners.tolist(), distances.tolist(), ids.tolist()):
        if template < 0 or len(seen) == top_k:
            break
        seen.setdefault(owner, (distance, template))
    return [(owner, distance, template) for owner, (distance, template) in seen.items()]
