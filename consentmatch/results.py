"""Frozen result types returned by the `Gallery`; never bare tuples or dicts.

Each has `to_dict()` giving the JSON shape of the CLI's `--json` output.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "Box",
    "Candidate",
    "ConsentSummary",
    "Enrollment",
    "Erasure",
    "FaceMatch",
    "ImportReport",
    "MatchResult",
    "Rejection",
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
    """

    box: Box
    subject: str | None
    distance: float | None
    candidates: tuple[Candidate, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": self.box.to_list(),
            "subject": self.subject,
            "distance": None if self.distance is None else round(self.distance, 6),
            "candidates": [c.to_dict() for c in self.candidates],
        }


@dataclass(frozen=True)
class MatchResult:
    """The faces found in one probe photo, each with its match."""

    image: str
    faces: tuple[FaceMatch, ...]
    purpose: str
    tolerance: float

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "faces": [f.to_dict() for f in self.faces], "error": None}


@dataclass(frozen=True)
class Verification:
    """A 1:1 check of one probe face against one enrolled subject."""

    subject: str
    image: str
    match: bool
    distance: float
    tolerance: float
    box: Box

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "image": self.image,
            "match": self.match,
            "distance": round(self.distance, 6),
            "tolerance": self.tolerance,
            "error": None,
        }


@dataclass(frozen=True)
class Enrollment:
    """What one `enroll` call stored."""

    subject: str
    templates_added: int
    templates_total: int
    consent_reference: str
    photos: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "templates_added": self.templates_added,
            "templates_total": self.templates_total,
            "consent_reference": self.consent_reference,
            "photos": list(self.photos),
        }


@dataclass(frozen=True)
class Erasure:
    """A receipt for `forget`: what was removed from the store and from the index."""

    subject: str
    templates_removed: int
    index_entries_removed: int
    consents_removed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "templates_removed": self.templates_removed,
            "index_entries_removed": self.index_entries_removed,
            "consents_removed": self.consents_removed,
        }


@dataclass(frozen=True)
class ConsentSummary:
    """A consent record as `subjects()` shows it; `active` is as of the call."""

    reference: str
    purposes: tuple[str, ...]
    granted_at: datetime
    expires_at: datetime | None
    jurisdiction: str | None
    active: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "purposes": list(self.purposes),
            "granted_at": _iso(self.granted_at),
            "expires_at": _iso(self.expires_at),
            "jurisdiction": self.jurisdiction,
            "active": self.active,
        }


@dataclass(frozen=True)
class SubjectInfo:
    """An enrolled subject: template count and consents, never the templates themselves."""

    subject: str
    templates: int
    enrolled_at: datetime
    consents: tuple[ConsentSummary, ...]

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            "rows": self.rows,
            "enrolled": len(self.enrolled),
            "subjects": list(self.subjects),
            "rejected": [r.to_dict() for r in self.rejected],
        }
