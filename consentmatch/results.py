"""Frozen result types returned by the `Gallery`; never bare tuples or dicts.

Each has `to_dict()` giving the JSON shape of the CLI's `--json` output.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "ApiKeyInfo",
    "Box",
    "Candidate",
    "AuditCheck",
    "AuditEvent",
    "ConsentRecord",
    "CopyReport",
    "Enrollment",
    "Erasure",
    "FaceMatch",
    "ImportReport",
    "KeyInfo",
    "MatchResult",
    "NewApiKey",
    "OptOut",
    "PurposeInfo",
    "Rejection",
    "RetentionEntry",
    "SearchRequest",
    "SubjectInfo",
    "Verification",
]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


@dataclass(frozen=True)
class Box:
    """A face's bounding box in the upright original photo, face_recognition's (top, right, bottom, left) order."""

    top: int
    right: int
    bottom: int
    left: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def to_list(self) -> list[int]:
        return [self.top, self.right, self.bottom, self.left]


@dataclass(frozen=True)
class Candidate:
    """A subject near a probe face, at the Euclidean distance of its nearest template."""

    subject: str
    distance: float

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "distance": round(self.distance, 6)}


@dataclass(frozen=True)
class FaceMatch:
    """One face of a probe photo: where it is, who it is (or None) and who is nearest.

    `subject` is the nearest candidate when it lies within the tolerance, else None;
    `candidates` are the top-k nearest subjects, each once, listed even beyond the tolerance.
    `ambiguous`: the two nearest subjects are closer than the policy's ambiguity margin, so no
    identity is given.
    """

    box: Box
    subject: str | None
    distance: float | None
    candidates: tuple[Candidate, ...]
    ambiguous: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": self.box.to_list(),
            "subject": self.subject,
            "distance": None if self.distance is None else round(self.distance, 6),
            "candidates": [c.to_dict() for c in self.candidates],
            "ambiguous": self.ambiguous,
        }


@dataclass(frozen=True)
class MatchResult:
    """The faces found in one probe photo, each with its match.

    `error` says why the photo could not be matched (`Gallery.match_many` goes on with the
    next photo); `faces` is then empty. `Gallery.match` raises instead, so it is always None there.
    """

    image: str
    faces: tuple[FaceMatch, ...]
    purpose: str
    tolerance: float
    error: str | None = None
    # Evidence, to tie the result to its record: when it was decided, the probe's SHA-256, the
    # audit event (seq) that recorded it and the model; None where the photo could not be read.
    at: datetime | None = None
    image_sha256: str | None = None
    audit_event: int | None = None
    model: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "faces": [f.to_dict() for f in self.faces], "error": self.error,
                "purpose": self.purpose, "tolerance": self.tolerance, "at": _iso(self.at), "image_sha256": self.image_sha256, "audit_event": self.audit_event,
                "model": self.model}


@dataclass(frozen=True)
class Verification:
    """A 1:1 check of one probe face against one enrolled subject."""

    subject: str
    image: str
    match: bool
    distance: float | None  # None beyond the tolerance: a non-match and an unknown name are one answer
    tolerance: float
    box: Box
    at: datetime | None = None  # evidence, as in MatchResult
    image_sha256: str | None = None
    audit_event: int | None = None
    model: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "image": self.image,
            "match": self.match,
            "distance": None if self.distance is None else round(self.distance, 6),
            "tolerance": self.tolerance,
            "error": None,
            "at": _iso(self.at),
            "image_sha256": self.image_sha256,
            "audit_event": self.audit_event,
            "model": self.model,
        }


@dataclass(frozen=True)
class Enrollment:
    """What one `enroll` call stored."""

    subject: str
    templates_added: int
    templates_total: int
    consent_reference: str
    photos: tuple[str, ...]
    already_enrolled: int = 0  # photos whose SHA-256 was already a template of the subject: not stored again

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "templates_added": self.templates_added,
            "templates_total": self.templates_total,
            "consent_reference": self.consent_reference,
            "photos": list(self.photos),
            "already_enrolled": self.already_enrolled,
        }


@dataclass(frozen=True)
class Erasure:
    """A receipt for an erasure (`forget`, consent revocation, opt-out, purge).

    `verified` is the post-check: searching with the removed templates found none of them,
    and the store holds none of their rows.
    """

    subject: str
    templates_removed: int
    index_entries_removed: int
    consents_removed: int
    reason: str = "forget"
    verified: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "templates_removed": self.templates_removed,
            "index_entries_removed": self.index_entries_removed,
            "consents_removed": self.consents_removed,
            "reason": self.reason,
            "verified": self.verified,
        }


@dataclass(frozen=True)
class ConsentRecord:
    """A recorded consent, as evidence: who signed what, for which purposes, until when.

    `active` is as of the call: not revoked and not expired.
    """

    reference: str
    subject: str
    purposes: tuple[str, ...]
    granted_at: datetime
    expires_at: datetime | None
    jurisdiction: str | None
    active: bool
    signer: str = "subject"
    evidence_sha256: str | None = None
    notice_version: str | None = None
    revoked_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "subject": self.subject,
            "purposes": list(self.purposes),
            "granted_at": _iso(self.granted_at),
            "expires_at": _iso(self.expires_at),
            "jurisdiction": self.jurisdiction,
            "signer": self.signer,
            "evidence_sha256": self.evidence_sha256,
            "notice_version": self.notice_version,
            "revoked_at": _iso(self.revoked_at),
            "active": self.active,
        }


@dataclass(frozen=True)
class SubjectInfo:
    """An enrolled subject: template count and consents, never the templates themselves."""

    subject: str
    templates: int
    enrolled_at: datetime
    consents: tuple[ConsentRecord, ...]

    @property
    def active_purposes(self) -> tuple[str, ...]:
        """The purposes this subject may be searched for now."""
        return tuple(sorted({p for c in self.consents if c.active for p in c.purposes}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "templates": self.templates,
            "enrolled_at": _iso(self.enrolled_at),
            "active_purposes": list(self.active_purposes),
            "consents": [c.to_dict() for c in self.consents],
        }


@dataclass(frozen=True)
class Rejection:
    """A manifest row that was not enrolled, and why."""

    row: int
    subject: str
    photo: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "subject": self.subject, "photo": self.photo, "reason": self.reason}


@dataclass(frozen=True)
class ImportReport:
    """The outcome of a bulk import: rows enrolled and rows rejected with reasons."""

    manifest: str
    rows: int
    enrolled: tuple[Enrollment, ...]
    rejected: tuple[Rejection, ...]

    @property
    def subjects(self) -> tuple[str, ...]:
        return tuple(sorted({e.subject for e in self.enrolled}))

    @property
    def already_enrolled(self) -> int:
        """Rows whose photos were all already templates of their subject (a manifest run again): nothing stored."""
        return sum(1 for e in self.enrolled if e.templates_added == 0 and e.already_enrolled > 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            "rows": self.rows,
            "enrolled": len(self.enrolled),
            "already_enrolled": self.already_enrolled,
            "subjects": list(self.subjects),
            "rejected": [r.to_dict() for r in self.rejected],
        }


@dataclass(frozen=True)
class RetentionEntry:
    """When a subject's templates must be destroyed, and which rule says so."""

    subject: str
    templates: int
    destroy_by: datetime | None
    rule: str
    overdue: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "templates": self.templates,
            "destroy_by": _iso(self.destroy_by),
            "rule": self.rule,
            "overdue": self.overdue,
        }


@dataclass(frozen=True)
class OptOut:
    """A do-not-enroll entry: a subject reference, or the keyed hash of an e-mail address (salted, if stored before schema 5)."""

    kind: str
    value: str
    added_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "added_at": _iso(self.added_at)}


@dataclass(frozen=True)
class PurposeInfo:
    """A purpose the gallery serves: searches and verifies may name only these."""

    purpose: str
    declared_at: datetime
    active_consents: int  # active consents that list it: who a search for it may find
    consents: int  # consents that list it at all, revoked and expired included
    needs_approval: bool = False  # in the policy's approval_purposes: a search is filed as a request

    def to_dict(self) -> dict[str, Any]:
        return {"purpose": self.purpose, "declared_at": _iso(self.declared_at),
                "active_consents": self.active_consents, "consents": self.consents,
                "needs_approval": self.needs_approval}


@dataclass(frozen=True)
class AuditEvent:
    """One link of the hash-chained audit trail. Never an image, an embedding or a location."""

    seq: int
    at: datetime
    actor: str
    action: str
    subject: str | None
    purpose: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": _iso(self.at),
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "purpose": self.purpose,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class AuditCheck:
    """The result of walking the audit chain: intact, or the first broken link and why."""

    intact: bool
    events: int
    head: str
    broken_at: int | None = None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "events": self.events,
            "head": self.head,
            "broken_at": self.broken_at,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class CopyReport:
    """A gallery copied to another store (`consentmatch copy`): what moved, and the audit chain's
    head, verified at both ends."""

    source: str
    target: str
    subjects: int
    templates: int
    consents: int
    audit_events: int
    audit_head: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "subjects": self.subjects,
            "templates": self.templates,
            "consents": self.consents,
            "audit_events": self.audit_events,
            "audit_head": self.audit_head,
            "verified": True,
        }


@dataclass(frozen=True)
class KeyInfo:
    """Where a gallery's keys are (never the keys themselves)."""

    gallery_id: str
    key_source: str
    key_dir: str  # the key folder; for a PostgreSQL gallery, the database its data keys are in
    data_keys: int

    def to_dict(self) -> dict[str, Any]:
        return {"gallery_id": self.gallery_id, "key_source": self.key_source, "key_dir": self.key_dir,
                "data_keys": self.data_keys}


@dataclass(frozen=True)
class ApiKeyInfo:
    """An API key of the service, as listed: never the key, nor its hash."""

    name: str
    roles: tuple[str, ...]
    purposes: tuple[str, ...]  # the purposes it may search for; empty: all
    expires: datetime | None
    created_at: datetime
    revoked_at: datetime | None = None
    rate_limit: int | None = None  # requests a minute; None: the policy's `rate_limit`

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires is None or now < self.expires)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "roles": list(self.roles), "purposes": list(self.purposes),
                "expires": _iso(self.expires), "created_at": _iso(self.created_at),
                "revoked_at": _iso(self.revoked_at), "rate_limit": self.rate_limit}


@dataclass(frozen=True)
class NewApiKey:
    """A key just created: the only time the key itself is shown (only a salted hash is kept)."""

    name: str
    key: str
    roles: tuple[str, ...]
    purposes: tuple[str, ...]
    expires: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "roles": list(self.roles), "purposes": list(self.purposes),
                "expires": _iso(self.expires)}


@dataclass(frozen=True)
class SearchRequest:
    """A match or verify for a purpose that needs approval, held until an approver decides.

    `status`: pending, approved, denied, expired, or erased (its subject was erased while it was
    pending). `result` (the search's JSON, or its error) is filled in on approval and shown only to
    the requester; the probe itself is destroyed then. The erasure of a subject the result names
    clears it (`error` says so).
    """

    request_id: str
    kind: str  # "match" or "verify"
    status: str
    requester: str
    purpose: str
    case_ref: str
    reason: str
    created_at: datetime
    expires_at: datetime
    subject: str | None = None  # verify: who the probe is checked against
    tolerance: float | None = None
    top_k: int | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_reason: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None  # the approved search could not run (e.g. no face in the probe)

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "kind": self.kind, "status": self.status, "requester": self.requester,
                "purpose": self.purpose, "subject": self.subject, "case_ref": self.case_ref, "reason": self.reason,
                "tolerance": self.tolerance, "top_k": self.top_k, "created_at": _iso(self.created_at),
                "expires_at": _iso(self.expires_at), "decided_by": self.decided_by,
                "decided_at": _iso(self.decided_at), "decision_reason": self.decision_reason,
                "result": self.result, "error": self.error}

    def result_names(self, *, measured: bool = False) -> set[str]:
        """The subjects the result names (a verify's subject; a match's faces and their candidates),
        which their erasure clears it for; `measured`: only those it gives a distance to."""
        names: set[str] = set()
        todo: list[Any] = [self.result]
        while todo:
            item = todo.pop()
            if isinstance(item, dict):
                named = item.get("subject")
                if isinstance(named, str) and not (measured and item.get("distance") is None):
                    names.add(named)
                todo.extend(item.values())
            elif isinstance(item, list):
                todo.extend(item)
        return names
