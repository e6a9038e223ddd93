"""Consent records: the reference of a signed release, the purposes it covers, until when."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone

from .errors import InvalidArgumentError
from .files import EVIDENCE_MAX_BYTES, FileKind, read_file
from .geo import ISO_REGION
from .text import check_text

__all__ = ["SIGNERS", "Consent", "evidence_digest", "parse_expiry", "utc"]

#: Who signed the release: the person, or a parent/guardian (for minors, BIPA's "legally authorized representative").
SIGNERS = ("subject", "guardian")

_PURPOSE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")
_EVIDENCE_FILE = FileKind(
    "Evidence", "the signed release file", EVIDENCE_MAX_BYTES, "store a smaller scan, or give its SHA-256 instead"
)


def utc(moment: datetime | date) -> datetime:
    """An aware UTC datetime; a bare date means 00:00 UTC that day, a naive datetime is taken as UTC."""
    if not isinstance(moment, datetime):
        return datetime.combine(moment, time(0), tzinfo=timezone.utc)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def parse_expiry(text: str) -> datetime:
    """Parse `YYYY-MM-DD` (or a full ISO 8601 time); the consent ends at 00:00 UTC that day.

    Raises:
        InvalidArgumentError: not a date.
    """
    try:
        return utc(datetime.fromisoformat(text.strip()))
    except (ValueError, OverflowError):  # OverflowError: a time zone that pushes year 9999 over
        raise InvalidArgumentError(f"'{text}' is not a date: write it as YYYY-MM-DD.") from None


def evidence_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a signed release file; the file itself is never stored.

    Raises:
        InvalidArgumentError: not a regular file of at most EVIDENCE_MAX_BYTES, or unreadable.
    """
    return hashlib.sha256(read_file(path, _EVIDENCE_FILE, InvalidArgumentError)).hexdigest()


def check_purpose(purpose: str) -> str:
    """A purpose label as stored, or InvalidArgumentError naming the rule."""
    label = purpose.strip()
    if not _PURPOSE.match(label):
        raise InvalidArgumentError(
            f"'{purpose}' is not a purpose label: use letters, digits and . _ : / - (up to 64), "
            "e.g. visitor-check-in."
        )
    return label


@dataclass(frozen=True)
class Consent:
    """A recorded consent: the customer's reference to a signed release and what it allows.

    Args:
        reference: the customer's identifier of the signed release (form number, document id).
        purposes: labels the consent covers, e.g. ``("visitor-check-in",)``; matching is only
            ever done for one of them.
        expires_at: when the consent ends (a date means 00:00 UTC that day); None: no end date.
        jurisdiction: ISO 3166-1/-2 code of the subject's residence, e.g. ``US-IL``; it decides
            the retention rule and what the consent must hold (BIPA and CUBI: evidence).
        signer: ``subject``, or ``guardian`` when a parent or legal representative signed.
        evidence_sha256: SHA-256 of the signed release (`evidence_digest(path)`); the file is not stored.
        notice_version: which version of the customer's written notice the person was shown.
    """

    reference: str
    purposes: tuple[str, ...]
    expires_at: datetime | None = None
    jurisdiction: str | None = None
    granted_at: datetime | None = field(default=None, compare=False)
    signer: str = "subject"
    evidence_sha256: str | None = None
    notice_version: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.reference, str) or not self.reference.strip():
            raise InvalidArgumentError("A consent needs a reference (1-200 characters): the id of the signed release.")
        reference = check_text(self.reference, "consent reference")
        raw: Iterable[str] = (self.purposes,) if isinstance(self.purposes, str) else self.purposes
        purposes = tuple(dict.fromkeys(check_purpose(p) for p in raw))
        if not purposes:
            raise InvalidArgumentError(f"Consent '{reference}' names no purpose: give at least one, e.g. visitor-check-in.")
        jurisdiction = self.jurisdiction.strip().upper() if self.jurisdiction else None
        if jurisdiction and not ISO_REGION.match(jurisdiction):
            raise InvalidArgumentError(
                f"'{self.jurisdiction}' is not an ISO 3166 code: write e.g. US-IL, US-CA or FR."
            )
        if self.signer not in SIGNERS:
            raise InvalidArgumentError(f"Signer {self.signer!r} is not one of {', '.join(SIGNERS)}.")
        evidence = self.evidence_sha256.strip().lower() if self.evidence_sha256 else None
        if evidence is not None and not re.fullmatch(r"[0-9a-f]{64}", evidence):
            raise InvalidArgumentError("evidence_sha256 must be a SHA-256 hex digest: use evidence_digest(path).")
        object.__setattr__(self, "evidence_sha256", evidence)
        notice = self.notice_version
        blank = notice is None or (isinstance(notice, str) and not notice.strip())
        object.__setattr__(self, "notice_version", None if blank else check_text(notice, "notice version"))
        object.__setattr__(self, "reference", reference)
        object.__setattr__(self, "purposes", purposes)
        object.__setattr__(self, "jurisdiction", jurisdiction)
        if self.expires_at is not None:
            object.__setattr__(self, "expires_at", utc(self.expires_at))
        if self.granted_at is not None:
            object.__setattr__(self, "granted_at", utc(self.granted_at))

    def is_active(self, now: datetime) -> bool:
        """True until the expiry (if any)."""
        return self.expires_at is None or now < self.expires_at
