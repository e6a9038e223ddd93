"""The `Gallery` facade: every verb of the SDK and the CLI, each delegated to its service in
`services/` over one shared `Context` (store, settings, encoder, clock, actor, lock, index cache)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .consent import Consent
from .images import PhotoInput
from .policy import DEFAULT_TOP_K, ENROLL_MIN_FACE_PX, PROBE_MIN_FACE_PX
from .results import (ApiKeyInfo, AuditCheck, AuditEvent, ConsentRecord, Enrollment, Erasure, ImportReport, KeyInfo,
                      MatchResult, NewApiKey, OptOut, PurposeInfo, RetentionEntry, SearchRequest, SubjectInfo,
                      Verification)
from .runners import Runner
from .services import access, approvals, consents, enrollment, erasure, governance, legacy, matching
from .services.context import Clock, Context
from .services.enrollment import Progress
from .settings import Settings
from .vision.types import Encoder

__all__ = ["Gallery"]


class Gallery:
    """A consent-gated face gallery in one SQLite file (or one PostgreSQL database shared by many
    machines: pass its ``postgresql://`` URL), created on the first enrollment or consent
    (reading a missing one raises `GalleryNotFoundError`). Safe to share between threads; several
    processes may open one file. Every call is audited under an actor: the call's `actor`, else
    the gallery's, else ``local:<OS user>``.

    Args:
        path: the gallery file, e.g. ``visitors.db``; or a PostgreSQL database's URL, e.g.
            ``postgresql://consentmatch@db.internal/visitors`` (README.md, "Many machines").
        encoder: finds and encodes faces; defaults to dlib's models, loaded on first use.
        clock: returns the current UTC time; consents and retention run by it (tests freeze it).
        actor: who is calling, for the audit trail, e.g. ``desk-3:jsmith``.
        key: the gallery key (32 bytes or 64 hex digits); None: CONSENTMATCH_KEY, the file
            CONSENTMATCH_KEY_FILE, or a key file created with the gallery (storage/keyring.py).
        key_dir: where the key files live; None: CONSENTMATCH_KEY_DIR or the user data folder.
        settings: the environment's settings (`Settings.from_env()`, read here when None): key
            sources, key and cache folders, encoder, the default quality bar.
        existing: refuse a gallery that does not exist yet (GalleryNotFoundError), for a caller
            that only reads or serves it: a mistyped path is an error, not an empty gallery.

    Example:
        >>> with Gallery("visitors.db", actor="desk-3") as gallery:
        ...     gallery.enroll("alice", ["alice.jpg"], Consent("FORM-17", ["visitor-check-in"]))
        ...     result = gallery.match("door.jpg", purpose="visitor-check-in")
    """

    def __init__(self, path: str | os.PathLike[str], *, encoder: Encoder | None = None, clock: Clock | None = None,
                 actor: str | None = None, key: bytes | str | None = None,
                 key_dir: str | os.PathLike[str] | None = None, settings: Settings | None = None,
                 existing: bool = False) -> None:
        self._ctx = Context.open(path, encoder=encoder, clock=clock, actor=actor, key=key, key_dir=key_dir,
                                 settings=settings, existing=existing)
        #: Where the gallery is, as given: a file path or a PostgreSQL URL.
        self.location = os.fspath(path)
        #: The gallery file; for a PostgreSQL gallery, this machine's own file of it (its index snapshot).
        self.path: Path = self._ctx.path

    @property
    def created_key_file(self) -> Path | None:
        """The gallery key file this object created (the first enrollment), else None: back it up apart from the gallery."""
        return self._ctx.keys.created_key_file if self._ctx.keys is not None else None

    @property
    def context(self) -> Context:
        """The services' shared Context, for an adapter that calls a service itself (the HTTP service)."""
        return self._ctx

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Save a large index for the next open (`search/snapshot.py`), close the store, drop the index."""
        self._ctx.close()

    if not TYPE_CHECKING:  # the HTTP service's former names, deprecated (services/legacy.py); mypy flags them
        def __getattr__(self, name: str) -> Any:
            return legacy.moved(self, name)

    def grant_consent(self, subject: str, consent: Consent, *, email: str | None = None,
                      actor: str | None = None) -> ConsentRecord:
        """Record a consent for `subject` before (or without) enrolling photos; in US-IL and US-TX
        `consent` must carry `evidence_sha256`. `email`: the person's e-mail, checked against the
        opt-out registry and kept only as a keyed hash (under the gallery's MAC key), so a later
        e-mail opt-out finds them. Raises ConsentError: expired, opted out, missing evidence, or a
        reference of another subject."""
        return consents.grant_consent(self._ctx, subject, consent, email, actor)

    def consent(self, reference: str) -> ConsentRecord:
        """One consent record by its reference. Raises ConsentError: no consent has this reference."""
        return consents.consent(self._ctx, reference)

    def consents(self, subject: str | None = None) -> list[ConsentRecord]:
        """Consent records, revoked ones included (as tombstones), of everyone or one subject."""
        return consents.consents(self._ctx, subject)

    def revoke_consent(self, reference: str, *, actor: str | None = None) -> Erasure:
        """Revoke a consent: the subject's templates are erased at once; the record stays as a tombstone.
        Idempotent: revoking again erases nothing more and says so in the receipt.
        Raises ConsentError: no consent has this reference."""
        return consents.revoke_consent(self._ctx, reference, actor)

    def enroll(self, subject: str, photos: Sequence[PhotoInput] | PhotoInput, consent: Consent | str | None, *,
               email: str | None = None, min_face_px: int = ENROLL_MIN_FACE_PX, quality: str | None = None,
               allow_duplicate: bool = False, actor: str | None = None) -> Enrollment:
        """Enroll a consenting subject from one or more photos, all or nothing (see `services/enrollment.py`).

        Args:
            subject: the customer's name or id for the person.
            photos: paths (or encoded bytes) of photos of this person only; each must hold one
                face at least `min_face_px` wide, pass the quality bar, not come from a region
                the policy excludes, and not match another subject (`duplicate_tolerance`).
            consent: a new `Consent` (recorded now, as `grant_consent`), or the reference of
                an active consent already recorded for this subject; None is refused.
            email: as `grant_consent`.
            quality: off, low, medium or high; None: the gallery policy's (medium by default).
            allow_duplicate: enroll even when the face matches another subject (twins).

        Raises:
            ConsentError: no consent, an inactive one, an opted-out subject, missing evidence.
            PolicyError: a photo was taken in an excluded region, or shows an enrolled subject.
            ImageError, FaceError (QualityError with its reasons): a photo cannot be used.
            Nothing is stored on any error; a refusal is recorded in the audit trail.
        """
        return enrollment.enroll(self._ctx, subject, photos, consent, email=email, min_face_px=min_face_px,
                                 quality=quality, allow_duplicate=allow_duplicate, actor=actor)

    def import_manifest(self, manifest: str | os.PathLike[str], *, progress: Progress | None = None,
                        quality: str | None = None, allow_duplicate: bool = False, actor: str | None = None,
                        runner: Runner | None = None) -> ImportReport:
        """Enroll every usable row of a manifest CSV (``subject,photo,consent_ref,purposes,expires,
        jurisdiction``; purposes `;`-separated); bad rows are reported and skipped. Each row enrolls
        on its own, as row by row would; photos are read on a thread pool, and finished rows are
        stored several to a transaction (up to 64; a stopped import redoes at most one batch).
        `progress`: called with (rows done, rows in all) as rows are stored; `quality`,
        `allow_duplicate`: as `enroll`; `runner`: where the photo work runs: this process's threads
        by default, or `RayRunner(address)` for a Ray cluster's workers (this process still admits
        and stores every row, in order: the same report).

        Raises:
            ManifestError: the file cannot be read or lacks a required column (nothing enrolled).
            EngineError: the Ray cluster cannot be reached.
        """
        return enrollment.import_manifest(self._ctx, manifest, progress=progress, quality=quality,
                                          allow_duplicate=allow_duplicate, actor=actor, runner=runner)

    def match(self, photo: PhotoInput, *, purpose: str | None = None, tolerance: float | None = None,
              top_k: int = DEFAULT_TOP_K, min_face_px: int = PROBE_MIN_FACE_PX,
              actor: str | None = None) -> MatchResult:
        """1:N: who, among the subjects consented for `purpose`, is each face of the probe `photo` (a
        `MatchResult`; a face with no subject within the tolerance has `subject=None`).

        Args:
            purpose: only subjects whose active consent lists it are searched. Required unless
                the gallery's policy sets `require_purpose` to false (then: any active consent).
            tolerance: the largest Euclidean distance that counts as the same person; lower is
                stricter. Default: the gallery policy's (0.6, dlib's typical best).
            top_k: nearest subjects listed per face, at most the policy's `max_top_k`; distances
                beyond the tolerance are shown rounded up to 2 decimals.
            min_face_px: the narrowest face looked for, in pixels (default 40); larger is faster.

        Raises:
            ImageError: the probe cannot be read (recorded in the audit trail as a refused match).
            GalleryNotFoundError: no gallery file.
            InvalidArgumentError: no purpose where the policy requires one; top_k over `max_top_k`.
            TamperingError: a subject it would return (name, consents, template) was edited outside consentmatch.
        """
        return matching.match(self._ctx, photo, purpose=purpose, tolerance=tolerance, top_k=top_k,
                              min_face_px=min_face_px, actor=actor)

    def match_many(self, photos: Sequence[PhotoInput] | PhotoInput, *, purpose: str | None = None,
                   tolerance: float | None = None, top_k: int = DEFAULT_TOP_K, min_face_px: int = PROBE_MIN_FACE_PX,
                   actor: str | None = None) -> Iterator[MatchResult]:
        """1:N on several probes: `match` on each (arguments as `match`, checked once before any photo
        is read), several at once on a thread pool. Returns one `MatchResult` per photo, in input
        order; a photo that cannot be read (ImageError, FaceError) gives one with no faces and the
        reason in `error`. Raises GalleryNotFoundError, InvalidArgumentError: as `match`, at the call;
        any other error (StorageError, EngineError) ends the iteration at its photo.
        """
        return matching.match_many(self._ctx, photos, purpose=purpose, tolerance=tolerance, top_k=top_k,
                                   min_face_px=min_face_px, actor=actor)

    def verify(self, subject: str, photo: PhotoInput, *, purpose: str | None = None, tolerance: float | None = None,
               min_face_px: int = PROBE_MIN_FACE_PX, actor: str | None = None) -> Verification:
        """1:1: is the one face in the probe this subject? The distance is to their nearest template,
        given within the tolerance only (None beyond it); no liveness check. Not enrolled, no templates
        or no consent for `purpose` answer as a non-match, after the same photo work, so the answer never
        tells who is enrolled; the audit trail records it as refused (NoActiveEnrollmentError).

        Raises:
            InvalidArgumentError: a tolerance over the policy's `max_tolerance`.
            ImageError, NoFaceError, MultipleFacesError: the probe must hold exactly one face.
            TamperingError: the subject, its consents or templates were edited outside consentmatch.
        """
        return matching.verify(self._ctx, subject, photo, purpose=purpose, tolerance=tolerance,
                               min_face_px=min_face_px, actor=actor)

    def forget(self, subject: str, *, actor: str | None = None) -> Erasure:
        """Erase a subject: templates, consent records and index entries, at once and for good. The
        audit trail keeps the (non-biometric) record that it happened. Raises SubjectNotFoundError."""
        return erasure.forget(self._ctx, subject, actor)

    def retention(self) -> list[RetentionEntry]:
        """When each enrolled subject's templates must be destroyed, soonest first (no date last)."""
        return erasure.retention(self._ctx)

    def purge(self, *, actor: str | None = None) -> list[Erasure]:
        """Destroy the templates of every subject past their retention date (overdue subjects are
        never returned by `match` or `verify`, even before a purge)."""
        return erasure.purge(self._ctx, actor)

    def add_optout(self, *, subject: str | None = None, email: str | None = None,
                   actor: str | None = None) -> list[Erasure]:
        """Put a subject reference or an e-mail (kept as a keyed hash) on the do-not-enroll list; everyone it
        names has their consents revoked and templates erased at once: one receipt each (none: nobody enrolled)."""
        return erasure.add_optout(self._ctx, subject, email, actor)

    def remove_optout(self, *, subject: str | None = None, email: str | None = None, actor: str | None = None) -> bool:
        """Take an entry off the do-not-enroll list (only at the person's own request). False if absent."""
        return erasure.remove_optout(self._ctx, subject, email, actor)

    def optouts(self) -> list[OptOut]:
        """The do-not-enroll list: subject references, and e-mails as hashes."""
        return erasure.optouts(self._ctx)

    def policy(self) -> dict[str, Any]:
        """The gallery's policy: every key of `policy.POLICY` with its value (see `policy set --help`)."""
        return governance.policy(self._ctx)

    def set_policy(self, key: str, value: Any, *, actor: str | None = None) -> dict[str, Any]:
        """Change one policy key (audited); strings are parsed as the CLI gives them.
        Raises InvalidArgumentError: unknown key or bad value."""
        return governance.set_policy(self._ctx, key, value, actor)

    def declare_purpose(self, name: str, *, actor: str | None = None) -> PurposeInfo:
        """Declare a purpose this gallery serves (audited); match and verify may name only declared
        purposes. A consent's purposes declare themselves unless the policy's `closed_purposes` is on.
        Raises InvalidArgumentError: not a purpose label."""
        return governance.declare_purpose(self._ctx, name, actor)

    def remove_purpose(self, name: str, *, actor: str | None = None) -> bool:
        """Withdraw a declared purpose (audited). False if it was not declared.
        Raises InvalidArgumentError: a consent, active or not, still lists it."""
        return governance.remove_purpose(self._ctx, name, actor)

    def purposes(self) -> list[PurposeInfo]:
        """The purposes this gallery serves, by name, each with how many active consents cover it."""
        return governance.purposes(self._ctx)

    def audit(self, subject: str | None = None, *, actor: str | None = None, action: str | None = None,
              purpose: str | None = None, since: datetime | None = None,
              until: datetime | None = None) -> list[AuditEvent]:
        """The audit trail, oldest first: all of it, or the events matching every filter given:
        naming `subject` (searches that showed them included), by `actor`, of `action`, for
        `purpose`, at or after `since`, at or before `until` (naive times are UTC)."""
        return governance.audit(self._ctx, subject, actor=actor, action=action, purpose=purpose, since=since, until=until)

    def verify_audit(self) -> AuditCheck:
        """Walk the hash chain (intact, or the first link edited, deleted or inserted), then check
        every row against its MAC or sealed binding (a failing row: `broken_at` None, `problem` names it)."""
        return governance.verify_audit(self._ctx)

    def export(self, subject: str, *, actor: str | None = None) -> dict[str, Any]:
        """A subject access bundle: consents, template metadata (no embeddings), retention, audit events.
        Raises SubjectNotFoundError: nothing is held about this subject."""
        return governance.export(self._ctx, subject, actor)

    def key_info(self) -> KeyInfo:
        """Where this gallery's keys are and how many subject data keys exist (never the keys)."""
        return governance.key_info(self._ctx)

    def rotate_key(self, *, new_key: bytes | str | None = None, actor: str | None = None) -> KeyInfo:
        """Re-wrap every subject's data key under a new gallery key (audited). A key file is replaced
        in place, crash-safely; a caller-held key (`key`, CONSENTMATCH_KEY) by `new_key`, stored first.
        Raises EncryptionKeyError: a caller-held key without `new_key`."""
        return governance.rotate_key(self._ctx, new_key, actor)

    def subjects(self) -> list[SubjectInfo]:
        """Everyone enrolled, by name, with template count and consents (never templates)."""
        return governance.subjects(self._ctx)

    def create_api_key(self, name: str, *, roles: Sequence[str], purposes: Sequence[str] = (),
                       expires: datetime | None = None, rate_limit: int | None = None,
                       actor: str | None = None) -> NewApiKey:
        """Create an API key for `consentmatch serve` (audited); the key is in the result only (the gallery
        keeps a salted scrypt hash). Raises InvalidArgumentError: an unknown role, a bad purpose, a past
        expiry, a name used before.

        Args:
            roles: any of admin, enroller, operator, approver, auditor (`services/access.ROLES`).
            purposes: what the key may search for; none: every purpose.
            expires: when it stops working; None: never (revoke it instead).
            rate_limit: requests a minute; None: the policy's `rate_limit`.
        """
        return access.create_api_key(self._ctx, name, roles, purposes, expires, rate_limit, actor)

    def api_keys(self) -> list[ApiKeyInfo]:
        """The service's API keys by name, revoked ones included (never a key or its hash)."""
        return access.api_keys(self._ctx)

    def revoke_api_key(self, name: str, *, actor: str | None = None) -> bool:
        """Revoke an API key at once (audited). False if no active key has this name."""
        return access.revoke_api_key(self._ctx, name, actor)

    def request_match(self, photo: PhotoInput, *, purpose: str, case_ref: str, reason: str,
                      tolerance: float | None = None, top_k: int | None = None,
                      actor: str | None = None) -> SearchRequest:
        """File a 1:N search for a purpose that needs approval (policy `approval_purposes`): the probe
        is held sealed until an approver other than `actor` approves (the search runs then) or denies
        it, or it expires; the result is for the requester only (`search_request`). Raises
        InvalidArgumentError: a purpose that needs no approval, a missing case reference or reason;
        ImageError: the probe cannot be read."""
        return approvals.request_search(self._ctx, "match", photo, purpose=purpose, case_ref=case_ref, reason=reason,
                                        tolerance=tolerance, top_k=top_k, requester=actor)

    def request_verify(self, subject: str, photo: PhotoInput, *, purpose: str, case_ref: str, reason: str,
                       tolerance: float | None = None, actor: str | None = None) -> SearchRequest:
        """File a 1:1 check for a purpose that needs approval, as `request_match`."""
        return approvals.request_search(self._ctx, "verify", photo, purpose=purpose, case_ref=case_ref, reason=reason,
                                        subject=subject, tolerance=tolerance, requester=actor)

    def search_requests(self, *, status: str | None = None, requester: str | None = None) -> list[SearchRequest]:
        """Search requests, oldest first (pending, approved, denied, expired or erased), without results;
        only those `requester` filed, when given (what a key that is no approver or auditor sees)."""
        return approvals.search_requests(self._ctx, status, requester)

    def search_request(self, request_id: str, *, actor: str | None = None, own_only: bool = False) -> SearchRequest:
        """One search request; its result only if `actor` filed it.
        Raises RequestNotFoundError: no request has this id (among `actor`'s own, with `own_only`)."""
        return approvals.search_request(self._ctx, request_id, reader=actor, own_only=own_only)

    def approve_request(self, request_id: str, *, reason: str, actor: str | None = None) -> SearchRequest:
        """Approve a pending request: its search runs now, under the requester's name; the probe is destroyed.
        Raises PermissionDeniedError: `actor` filed the request; InvalidArgumentError: it is no longer pending."""
        return approvals.decide(self._ctx, request_id, approve=True, reason=reason, approver=actor)

    def deny_request(self, request_id: str, *, reason: str, actor: str | None = None) -> SearchRequest:
        """Deny a pending request; its probe is destroyed, no search runs."""
        return approvals.decide(self._ctx, request_id, approve=False, reason=reason, approver=actor)
