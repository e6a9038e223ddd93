"""The `Gallery` facade: every verb of the SDK and the CLI. It composes the other modules.

Data flows one way:
  enroll: consent check -> decode -> region check -> detect -> quality -> encode
          -> store + audit (one transaction) -> index
  match:  decode -> detect -> encode -> index search among consented templates
          -> store lookup -> decide -> audit

Several photos (`match_many`, `import_manifest`): the photo work (decode, detect, encode,
quality) runs on a thread pool, a few photos ahead; the store work stays in input order.
"""

from __future__ import annotations

import getpass
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import numpy as np
from numpy.typing import NDArray

from . import vision
from .consent import Consent, check_purpose
from .vision.types import DetectedFace, Encoder
from .errors import (
    ConsentError,
    ConsentMatchError,
    FaceError,
    GalleryNotFoundError,
    ImageError,
    InvalidArgumentError,
    NoActiveEnrollmentError,
    PolicyError,
    SubjectNotFoundError,
)
from .images import Photo, PhotoInput, load_photo, photo_name
from .crypto import parse_key
from .manifest import ManifestRow, read_manifest
from .policy import (
    DEFAULT_TOP_K,
    ENROLL_MIN_FACE_PX,
    EVIDENCE_REQUIRED,
    PROBE_MIN_FACE_PX,
    check_min_face,
    check_policy_top_k,
    check_tolerance,
    check_top_k,
    default_policy,
    parse_policy_value,
)
from .retention import destroy_by
from .settings import Settings
from .pool import in_order, photo_pool
from .quality import check_quality, single_face
from .results import (
    AuditCheck,
    AuditEvent,
    Candidate,
    ConsentRecord,
    Enrollment,
    Erasure,
    FaceMatch,
    ImportReport,
    KeyInfo,
    MatchResult,
    OptOut,
    Rejection,
    RetentionEntry,
    SubjectInfo,
    Verification,
)
from .search import snapshot
from .search.index import FaceIndex
from .storage import KeyRing, Searchable, Transaction, open_store, reference_taken
from .text import check_text

__all__ = ["Gallery"]

Clock = Callable[[], datetime]
Progress = Callable[[int, int], None]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _default_actor() -> str:
    try:
        return f"local:{getpass.getuser()}"
    except Exception:  # no user name in some containers
        return "local:unknown"


def _check_name(value: str, what: str) -> str:
    return check_text(value, what)


class Gallery:
    """A consent-gated face gallery in one SQLite file.

    The file is created on the first enrollment or consent; reading a missing one raises
    `GalleryNotFoundError`. Safe to share between threads; several processes may open one file.
    Every call is recorded in the audit trail under an actor: the `actor` argument of the
    call, else the gallery's, else ``local:<OS user>``.

    Args:
        path: the gallery file, e.g. ``visitors.db``.
        encoder: finds and encodes faces; defaults to dlib's models, loaded on first use.
        clock: returns the current UTC time; consents and retention run by it (tests freeze it).
        actor: who is calling, for the audit trail, e.g. ``desk-3:jsmith``.
        key: the gallery key (32 bytes or 64 hex digits); None: CONSENTMATCH_KEY, the file
            CONSENTMATCH_KEY_FILE, or a key file created with the gallery (see keys.py).
        key_dir: where the key files live; None: CONSENTMATCH_KEY_DIR or the user data folder.
        settings: the environment's settings (`Settings.from_env()`, read here when None): key
            sources, key and cache folders, encoder, the default quality bar.

    Example:
        >>> with Gallery("visitors.db", actor="desk-3") as gallery:
        ...     gallery.enroll("alice", ["alice.jpg"], Consent("FORM-17", ["visitor-check-in"]))
        ...     result = gallery.match("door.jpg", purpose="visitor-check-in")
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        encoder: Encoder | None = None,
        clock: Clock | None = None,
        actor: str | None = None,
        key: bytes | str | None = None,
        key_dir: str | os.PathLike[str] | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.path = Path(path)
        self._settings = settings if settings is not None else Settings.from_env()
        self._store = open_store(self.path, KeyRing(key, key_dir, self._settings), self._settings)
        self._encoder: Encoder = encoder if encoder is not None else vision.default_encoder(self._settings)
        self._clock = clock or _utcnow
        self._actor = _check_name(actor, "actor") if actor else _default_actor()
        self._lock = threading.RLock()  # guards the index and caches; encoding runs outside it
        self._index: FaceIndex | None = None
        self._searchable: dict[str | None, tuple[int, Searchable]] = {}
        self._snapshot = snapshot.path_for(self.path)
        self._saved_state: str | None = None  # the templates_state of the snapshot on disk, when known

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Save a large index for the next open (`snapshot.py`), close the SQLite connection, drop the index."""
        with self._lock:
            self._save_snapshot()
            self._store.close()
            self._index = None
            self._searchable.clear()

    def _now(self) -> datetime:
        return self._clock().astimezone(timezone.utc)

    def _who(self, actor: str | None) -> str:
        return _check_name(actor, "actor") if actor else self._actor

    # -- consent records -------------------------------------------------------------------

    def grant_consent(
        self, subject: str, consent: Consent, *, email: str | None = None, actor: str | None = None
    ) -> ConsentRecord:
        """Record a consent before (or without) enrolling photos.

        Args:
            subject: the person it covers.
            consent: the record; in US-IL and US-TX it must carry `evidence_sha256`.
            email: the person's e-mail, checked against the opt-out registry and kept only as a
                keyed hash (under the gallery's MAC key), so a later e-mail opt-out finds them.

        Raises:
            ConsentError: expired, opted out, missing evidence, or a reference of another subject.
        """
        name = _check_name(subject, "subject name")
        now = self._now()
        self._check_consent(consent, now)
        with self._lock:
            with self._store.write(create=True) as tx:
                before = tx.generation()
                self._record(tx, name, consent, email, now, self._who(actor))
                (record,) = tx.consent_records(now, reference=consent.reference)
            self._synced(before)
        return record

    def consent(self, reference: str) -> ConsentRecord:
        """One consent record by its reference.

        Raises:
            ConsentError: no consent has this reference.
        """
        with self._lock, self._store.read() as tx:
            records = tx.consent_records(self._now(), reference=reference)
        if not records:
            raise ConsentError(f"No consent has the reference '{reference}': check it with `consentmatch consent list`.")
        return records[0]

    def consents(self, subject: str | None = None) -> list[ConsentRecord]:
        """Consent records, revoked ones included (as tombstones), of everyone or one subject."""
        if not self._store.exists():
            return []
        with self._lock, self._store.read() as tx:
            subject_id = self._subject_id(tx, _check_name(subject, "subject name")) if subject else None
            return tx.consent_records(self._now(), subject_id=subject_id)

    def revoke_consent(self, reference: str, *, actor: str | None = None) -> Erasure:
        """Revoke a consent: the subject's templates are erased at once; the record stays as a tombstone.

        Idempotent: revoking again erases nothing more and says so in the receipt.

        Raises:
            ConsentError: no consent has this reference.
        """
        now = self._now()

        def revoke(tx: Transaction, subject_id: int, removed: int) -> int:
            _, already = tx.revoke(reference, now)
            tx.delete_templates(subject_id)
            self._refresh_retention(tx, subject_id, now)
            tx.append_audit(at=now, actor=self._who(actor), action="consent-revoke",
                         subject=self._subject_name(tx, subject_id),
                         details={"consent": reference, "templates_removed": removed, "already_revoked": already})
            return 0

        def owner(tx: Transaction) -> int:
            name = tx.consent_owner(reference)
            if name is None:
                raise ConsentError(f"No consent has the reference '{reference}': check it with `consentmatch consent list`.")
            return self._subject_id(tx, name)

        return self._erase(owner, "revoke", revoke)

    # -- enrollment ------------------------------------------------------------------------

    def enroll(
        self,
        subject: str,
        photos: Sequence[PhotoInput] | PhotoInput,
        consent: Consent | str | None,
        *,
        email: str | None = None,
        min_face_px: int = ENROLL_MIN_FACE_PX,
        quality: str | None = None,
        allow_duplicate: bool = False,
        actor: str | None = None,
    ) -> Enrollment:
        """Enroll a consenting subject from one or more photos, all or nothing.

        Each photo must hold exactly one face at least `min_face_px` wide, pass the quality
        bar, must not have been taken in a region the policy excludes (EXIF GPS), and must not
        match another enrolled subject within the policy's `duplicate_tolerance`. The consent
        and the templates are stored in one transaction.

        Args:
            subject: the customer's name or id for the person.
            photos: paths (or encoded bytes) of photos of this person only.
            consent: a new `Consent` (recorded now, as `grant_consent`), or the reference of
                an active consent already recorded for this subject; None is refused.
            email: see `grant_consent`.
            quality: off, low, medium or high; None: the gallery policy's (medium by default).
            allow_duplicate: enroll even when the face matches another subject (twins).

        Raises:
            ConsentError: no consent, an inactive one, an opted-out subject, missing evidence.
            PolicyError: a photo was taken in an excluded region, or shows an enrolled subject.
            ImageError, FaceError (QualityError with its reasons): a photo cannot be used.
            Nothing is stored on any error; a refusal (any of these) is recorded in the audit
            trail of an existing gallery.
        """
        name = _check_name(subject, "subject name")
        with self._refusals("enroll", name, None, actor):
            return self._enroll(name, photos, consent, email=email, min_face_px=min_face_px, quality=quality,
                                allow_duplicate=allow_duplicate, actor=actor)

    def _enroll(
        self, name: str, photos: Sequence[PhotoInput] | PhotoInput, consent: Consent | str | None, *,
        email: str | None, min_face_px: int, quality: str | None, allow_duplicate: bool, actor: str | None,
    ) -> Enrollment:
        admission = self._admit(name, photos, consent, email=email, min_face_px=min_face_px, quality=quality)
        return self._commit(admission, self._read_faces(admission), allow_duplicate=allow_duplicate, actor=actor)

    def _admit(
        self,
        subject: str,
        photos: Sequence[PhotoInput] | PhotoInput,
        consent: Consent | str | None,
        *,
        email: str | None,
        min_face_px: int,
        quality: str | None,
    ) -> _Admission:
        """An enrollment's checks before any biometric processing: name, consent, opt-out, policy.

        Reads the store, never a photo: a subject without a lawful basis is refused before
        their photo is even decoded.
        """
        name = _check_name(subject, "subject name")
        if consent is None:
            raise ConsentError(
                f"Enrolling '{name}' needs a recorded consent: pass Consent(reference, purposes) "
                "(CLI: --consent-ref REF --purpose P)."
            )
        now = self._now()
        if isinstance(consent, Consent):
            self._check_consent(consent, now)
        batch = [photos] if isinstance(photos, (str, bytes, os.PathLike)) else list(photos)
        if not batch:
            raise InvalidArgumentError(f"No photos given for '{name}': name at least one photo of the person.")
        policy = default_policy(self._settings.quality)
        if self._store.exists():
            with self._lock, self._store.read() as tx:
                self._check_enrollable(tx, name, consent, email, now)
                policy = tx.policy()
        elif isinstance(consent, str):
            raise ConsentError(f"No consent has the reference '{consent}': record it first (`consentmatch consent grant`).")
        level = parse_policy_value("quality", quality) if quality is not None else policy["quality"]
        return _Admission(name, consent, email, tuple(batch), now, policy, level, min_face_px)

    def _read_faces(self, admission: _Admission) -> list[tuple[str, DetectedFace]]:
        """Each admitted photo's SHA-256 and its one face: decode, region, detect, quality, encode.

        Reads no store and writes nothing, so it may run on any thread.
        """
        excluded = admission.policy["excluded_regions"]
        return [self._enrollment_face(p, admission.min_face_px, excluded, admission.level) for p in admission.photos]

    def _commit(
        self, admission: _Admission, faces: Sequence[tuple[str, DetectedFace]], *, allow_duplicate: bool,
        actor: str | None,
    ) -> Enrollment:
        """Store an admitted enrollment: the duplicate check, one write transaction, then the index."""
        name, consent, email, now = admission.name, admission.consent, admission.email, admission.now
        if not allow_duplicate:
            self._check_duplicates(name, admission.photos, [f for _, f in faces], admission.policy["duplicate_tolerance"])
        with self._lock:
            with self._store.write(create=True) as tx:
                before = tx.generation()
                self._check_enrollable(tx, name, consent, email, now)  # again: the store may have changed
                if isinstance(consent, Consent):
                    subject_id, consent_id = self._record(tx, name, consent, email, now, self._who(actor))
                    reference = consent.reference
                else:
                    subject_id, consent_id, reference = self._existing_consent(tx, name, consent, now)
                with tx.renewing(subject_id, strict=True):
                    ids = [tx.add_template(subject_id, consent_id, f.encoding, sha, f.box, now)
                           for sha, f in faces]
                    total = tx.template_count(subject_id)
                    self._refresh_retention(tx, subject_id, now)
                tx.append_audit(at=now, actor=self._who(actor), action="enroll", subject=name,
                             details={"consent": reference, "templates_added": len(ids), "templates_total": total})
            vectors = np.stack([f.encoding for _, f in faces])
            self._synced(before, lambda index: index.add(np.array(ids, dtype=np.int64), vectors))
        return Enrollment(
            subject=name,
            templates_added=len(ids),
            templates_total=total,
            consent_reference=reference,
            photos=tuple(photo_name(p) for p in admission.photos),
        )

    def import_manifest(
        self,
        manifest: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        quality: str | None = None,
        allow_duplicate: bool = False,
        actor: str | None = None,
    ) -> ImportReport:
        """Enroll every usable row of a manifest CSV; bad rows are reported and skipped.

        Columns: ``subject,photo,consent_ref,purposes,expires,jurisdiction`` (purposes
        `;`-separated; photo paths absolute or relative to the manifest). Each row enrolls on
        its own, so a bad row costs only itself.

        The report is the one enrolling row by row gives: while a row is stored, the photos of
        the next few are decoded and encoded on a thread pool (one thread per CPU), and every
        step that earlier rows can change (the duplicate check, the store writes) runs in row
        order. A row's consent and opt-out are checked before its photo is read; a row whose
        consent check an earlier row still in progress could change (the same consent reference
        for another subject) waits for it.

        Args:
            progress: called with (rows done, rows in all) after each row.
            quality, allow_duplicate: as for `enroll`.

        Raises:
            ManifestError: the file cannot be read or lacks a required column (nothing enrolled).
        """
        rows = read_manifest(manifest)
        enrolled: list[Enrollment] = []
        rejected: list[Rejection] = []
        unstored: dict[int, ManifestRow] = {}  # rows started ahead that may still enroll

        def start(numbered: tuple[int, ManifestRow]) -> Callable[[], Enrollment]:
            """Admit a row and start reading its photo; returns what finishes it at its turn."""
            number, row = numbered
            try:
                if row.problem is not None:
                    raise InvalidArgumentError(row.problem)
                if any(_may_claim(earlier, row) for earlier in unstored.values()):
                    unstored[number] = row
                    return lambda: self._enroll(row.subject, [row.photo], row.consent, email=row.email,
                                                min_face_px=ENROLL_MIN_FACE_PX, quality=quality,
                                                allow_duplicate=allow_duplicate, actor=actor)
                admission = self._admit(row.subject, [row.photo], row.consent, email=row.email,
                                        min_face_px=ENROLL_MIN_FACE_PX, quality=quality)
            except Exception as exc:  # reported at the row's turn, as enrolling row by row would
                return _raising(exc)
            unstored[number] = row
            faces = pool.submit(self._read_faces, admission)
            return lambda: self._commit(admission, faces.result(), allow_duplicate=allow_duplicate, actor=actor)

        with photo_pool(len(rows), partial(vision.load_models, self._encoder)) as (pool, ahead):
            for done, ((number, row), finish) in enumerate(in_order(enumerate(rows), start, ahead), start=1):
                try:
                    enrolled.append(finish())
                except ConsentMatchError as exc:
                    rejected.append(Rejection(row=row.line, subject=row.subject, photo=row.photo, reason=str(exc)))
                    self._record_refusal("enroll", row.subject, None, actor, exc)
                unstored.pop(number, None)
                if progress is not None:
                    progress(done, len(rows))
        return ImportReport(manifest=os.fspath(manifest), rows=len(rows), enrolled=tuple(enrolled), rejected=tuple(rejected))

    # -- search ----------------------------------------------------------------------------

    def match(
        self,
        photo: PhotoInput,
        *,
        purpose: str | None = None,
        tolerance: float | None = None,
        top_k: int = DEFAULT_TOP_K,
        min_face_px: int = PROBE_MIN_FACE_PX,
        actor: str | None = None,
    ) -> MatchResult:
        """1:N: who, among the subjects consented for `purpose`, is each face of the probe.

        Args:
            photo: the probe; every face in it is matched.
            purpose: only subjects whose active consent lists it are searched. Required unless
                the gallery's policy sets `require_purpose` to false (then: any active consent).
            tolerance: the largest Euclidean distance that counts as the same person; lower is
                stricter. Default: the gallery policy's (0.6, dlib's typical best).
            top_k: how many nearest subjects to list per face, each once; at most the policy's
                `max_top_k` (10 by default). Distances beyond the tolerance are shown rounded
                (up, to 2 decimals): a list of near misses is no fine measure of a face.
            min_face_px: the narrowest face looked for, in the photo's pixels. The default, 40,
                is face_recognition's reach; a camera whose faces are always larger can say so
                and be faster (detection runs on a copy scaled so this width reaches the
                detector: 80 px halves the work on a large photo).

        Returns:
            A `MatchResult`; a face with no subject within the tolerance has `subject=None`.

        Raises:
            ImageError: the probe cannot be read (recorded in the audit trail as a refused match).
            GalleryNotFoundError: no gallery file.
            InvalidArgumentError: no purpose where the policy requires one; top_k over `max_top_k`.
            TamperingError: a subject it would return (name, consents, template) was edited
                outside consentmatch.
        """
        top_k, min_face_px = check_top_k(top_k), check_min_face(min_face_px)
        label, tolerance, policy = self._search_terms(purpose, tolerance)
        top_k = check_policy_top_k(top_k, policy)
        with self._refusals("match", None, label, actor):
            probed = self._probe(photo, min_face_px)
        return self._decide(*probed, label, tolerance, policy, top_k, actor)

    def match_many(
        self,
        photos: Sequence[PhotoInput] | PhotoInput,
        *,
        purpose: str | None = None,
        tolerance: float | None = None,
        top_k: int = DEFAULT_TOP_K,
        min_face_px: int = PROBE_MIN_FACE_PX,
        actor: str | None = None,
    ) -> Iterator[MatchResult]:
        """1:N on several probes: `match` on each, several photos at once.

        The photos are decoded, detected and encoded on a thread pool (one thread per CPU),
        a few ahead; the searches, decisions and audit events follow in input order, so each
        result is the one `match` gives.

        Args:
            photos: the probes; every face in each is matched.
            purpose, tolerance, top_k, min_face_px: as for `match`; checked once, before any photo is read.

        Returns:
            An iterator of one `MatchResult` per photo, in input order, each as soon as it and
            those before it are done. A photo that cannot be read (ImageError, FaceError) gives a
            result with no faces and the reason in `error`, and the next photo follows.

        Raises:
            GalleryNotFoundError, InvalidArgumentError: as `match`, at the call. Any other error
            (StorageError, EngineError) ends the iteration at its photo.
        """
        top_k, min_face_px = check_top_k(top_k), check_min_face(min_face_px)
        label, tolerance, policy = self._search_terms(purpose, tolerance)
        top_k = check_policy_top_k(top_k, policy)
        batch = [photos] if isinstance(photos, (str, bytes, os.PathLike)) else list(photos)
        return self._matches(batch, label, tolerance, policy, top_k, min_face_px, actor)

    def _matches(
        self, photos: list[PhotoInput], label: str | None, tolerance: float, policy: dict[str, Any], top_k: int,
        min_face_px: int, actor: str | None,
    ) -> Iterator[MatchResult]:
        with photo_pool(len(photos), partial(vision.load_models, self._encoder)) as (pool, ahead):
            for number, (photo, probed) in enumerate(in_order(photos, lambda p: pool.submit(self._probe, p, min_face_px), ahead)):
                if number == 0:  # while the first photos are read: the index and who may be searched
                    self._search_state(label)
                try:
                    name, faces = probed.result()
                except (ImageError, FaceError) as exc:
                    self._record_refusal("match", None, label, actor, exc)
                    yield MatchResult(image=photo_name(photo), faces=(), purpose=label or "", tolerance=tolerance,
                                      error=str(exc))
                    continue
                yield self._decide(name, faces, label, tolerance, policy, top_k, actor)

    def _probe(self, photo: PhotoInput, min_face_px: int) -> tuple[str, list[DetectedFace]]:
        """A probe's name and faces: the photo work of a match, safe on any thread."""
        decoded = load_photo(photo)
        return decoded.name, self._encoder.encode(decoded, min_face_px)

    def _decide(
        self, name: str, faces: list[DetectedFace], label: str | None, tolerance: float, policy: dict[str, Any],
        top_k: int, actor: str | None,
    ) -> MatchResult:
        """Search the probe's faces among the consented templates, name them, and audit the search."""
        with self._lock, self._store.read() as tx:
            index, searchable = self._search_state(label, tx)
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
        self._record_search("match", label, actor, matched, {"faces": len(faces), "tolerance": tolerance, "top_k": top_k})
        return MatchResult(image=name, faces=tuple(results), purpose=label or "", tolerance=tolerance)

    def verify(
        self,
        subject: str,
        photo: PhotoInput,
        *,
        purpose: str | None = None,
        tolerance: float | None = None,
        min_face_px: int = PROBE_MIN_FACE_PX,
        actor: str | None = None,
    ) -> Verification:
        """1:1: is the one face in the probe this subject (e.g. before a large transfer)?

        The distance is to the subject's nearest template, computed exactly (beyond the
        tolerance: rounded up to 2 decimals, as in `match`). Not authentication on its own:
        there is no liveness check. `min_face_px` as for `match`.

        A subject who is not enrolled, has no templates, or has no active consent for
        `purpose` gets one and the same answer, so the call does not tell who is enrolled.
        Every refusal is recorded in the audit trail under the subject named.

        Raises:
            NoActiveEnrollmentError: not enrolled, or no active consent for `purpose` (both a
                ConsentError and a SubjectNotFoundError, as each case raised before).
            ImageError, NoFaceError, MultipleFacesError: the probe must hold exactly one face.
            TamperingError: the subject, its consents or templates were edited outside consentmatch.
        """
        name, min_face_px = _check_name(subject, "subject name"), check_min_face(min_face_px)
        label, tolerance, policy = self._search_terms(purpose, tolerance)
        with self._refusals("verify", name, label, actor):
            with self._lock, self._store.read() as tx:  # consent first: no biometric work without it
                subject_id = tx.subject_id(name)
                if subject_id is not None:
                    tx.check_subject(subject_id)  # its name and consents, as consentmatch wrote them
                    if not self._enrolled_for(tx, subject_id, label):
                        subject_id = None
            if subject_id is None:
                raise _not_enrolled(name, label)
            decoded = load_photo(photo)
            face = single_face(self._encoder.encode(decoded, min_face_px), decoded.name)
            if policy["quality"] != "off":
                check_quality(decoded, face, level=policy["quality"], for_enrollment=False)
            with self._lock, self._store.read() as tx:  # by id: a namesake enrolled meanwhile is someone else
                _, templates = tx.subject_templates(subject_id)
            if not len(templates):
                raise _not_enrolled(name, label)
        distance = float(np.linalg.norm(templates - face.encoding, axis=1).min())
        match = distance <= tolerance
        self._record_search("verify", label, actor, {subject_id: name} if match else {},
                            {"subject": name, "match": match, "tolerance": tolerance}, subject=name)
        return Verification(subject=name, image=decoded.name, match=match, distance=_shown(distance, tolerance),
                            tolerance=tolerance, box=face.box)

    def _enrolled_for(self, tx: Transaction, subject_id: int, label: str | None) -> bool:
        """Whether the subject has templates and an active consent for the purpose (None: any)."""
        purposes = tx.active_purposes(subject_id, self._now())
        return bool(label in purposes if label else purposes) and tx.template_count(subject_id) > 0

    # -- erasure and retention -------------------------------------------------------------

    def forget(self, subject: str, *, actor: str | None = None) -> Erasure:
        """Erase a subject: templates, consent records and index entries, at once and for good.

        The audit trail keeps the (non-biometric) record that it happened.

        Raises:
            SubjectNotFoundError: the subject is not enrolled.
        """
        name = _check_name(subject, "subject name")
        now = self._now()

        def forget(tx: Transaction, subject_id: int, removed: int) -> int:
            _, consents = tx.delete_subject(subject_id)
            tx.append_audit(at=now, actor=self._who(actor), action="forget", subject=name,
                         details={"templates_removed": removed, "consents_removed": consents})
            return consents

        return self._erase(lambda tx: self._subject_id(tx, name), "forget", forget)

    def retention(self) -> list[RetentionEntry]:
        """When each enrolled subject's templates must be destroyed, soonest first (no date last)."""
        if not self._store.exists():
            return []
        now = self._now()
        with self._lock, self._store.read() as tx:
            rows = tx.retention()
        entries = [
            RetentionEntry(subject=n, templates=c, destroy_by=d, rule=r, overdue=d is not None and d <= now)
            for _, n, c, d, r in rows
        ]
        far = datetime.max.replace(tzinfo=timezone.utc)
        return sorted(entries, key=lambda e: (e.destroy_by or far, e.subject))

    def purge(self, *, actor: str | None = None) -> list[Erasure]:
        """Destroy the templates of every subject past their retention date.

        Overdue subjects are never returned by `match` or `verify`, even before a purge.
        """
        if not self._store.exists():
            return []
        receipts = []
        for entry in self.retention():
            if not entry.overdue:
                continue
            now, due = self._now(), entry

            def purge(tx: Transaction, subject_id: int, removed: int) -> int:
                tx.delete_templates(subject_id)
                tx.append_audit(at=now, actor=self._who(actor), action="purge", subject=due.subject,
                             details={"templates_removed": removed, "rule": due.rule,
                                      "destroy_by": due.destroy_by.isoformat() if due.destroy_by else None})
                return 0

            receipts.append(self._erase(partial(self._subject_id, name=entry.subject), "purge", purge))
        return receipts

    # -- opt-out registry ------------------------------------------------------------------

    def add_optout(
        self, *, subject: str | None = None, email: str | None = None, actor: str | None = None
    ) -> list[Erasure]:
        """Put a subject reference or an e-mail on the do-not-enroll list; erase who it names.

        The e-mail is kept only as a keyed hash (see `grant_consent`). Everyone it names has their consents
        revoked and templates erased at once.

        Returns:
            One erasure receipt per subject erased (none when nobody was enrolled).
        """
        kind, value = self._optout_key(subject, email, create=True)
        now = self._now()
        receipts = []
        with self._lock:
            with self._store.write(create=True) as tx:
                before = tx.generation()
                tx.add_optout(kind, self._optout_values(tx, kind, value)[0], now)
                hashes = tx.email_hashes(value) if kind == "email" else []
                names = [value] if kind == "subject" else tx.subjects_with_email(hashes)
                tx.append_audit(at=now, actor=self._who(actor), action="optout-add",
                             subject=value if kind == "subject" else None, details={"kind": kind, "erases": names})
            self._synced(before)


            def opt_out(tx: Transaction, subject_id: int, removed: int) -> int:
                tx.revoke_all(subject_id, now)
                tx.delete_templates(subject_id)
                self._refresh_retention(tx, subject_id, now)
                return 0

            for name in names:
                try:
                    receipts.append(self._erase(partial(self._subject_id, name=name), "optout", opt_out))
                except SubjectNotFoundError:  # named by the e-mail's consent, already forgotten
                    continue
        return receipts

    def remove_optout(self, *, subject: str | None = None, email: str | None = None, actor: str | None = None) -> bool:
        """Take an entry off the do-not-enroll list (only at the person's own request). False if absent."""
        kind, value = self._optout_key(subject, email, create=False)
        with self._lock, self._store.write() as tx:
            removed = any([tx.remove_optout(kind, v) for v in self._optout_values(tx, kind, value)])
            tx.append_audit(at=self._now(), actor=self._who(actor), action="optout-remove",
                         subject=value if kind == "subject" else None, details={"kind": kind, "removed": removed})
        return removed

    def optouts(self) -> list[OptOut]:
        """The do-not-enroll list: subject references, and e-mails as hashes."""
        if not self._store.exists():
            return []
        with self._lock, self._store.read() as tx:
            return [OptOut(kind=k, value=v, added_at=a) for k, v, a in tx.optouts()]

    # -- policy, audit, subject access -----------------------------------------------------

    def policy(self) -> dict[str, Any]:
        """The gallery's policy: `require_purpose`, `excluded_regions`, `tolerance`."""
        if not self._store.exists():
            return default_policy(self._settings.quality)
        with self._lock, self._store.read() as tx:
            return tx.policy()

    def set_policy(self, key: str, value: Any, *, actor: str | None = None) -> dict[str, Any]:
        """Change one policy key (audited); strings are parsed as the CLI gives them.

        Raises:
            InvalidArgumentError: unknown key or bad value.
        """
        parsed = parse_policy_value(key, value)
        with self._lock:
            with self._store.write(create=True) as tx:
                before = tx.generation()
                old = tx.policy()[key]
                tx.set_policy(key, parsed)
                tx.append_audit(at=self._now(), actor=self._who(actor), action="policy-set",
                             details={"key": key, "old": old, "new": parsed})
                policy = tx.policy()
            self._synced(before)
        return policy

    def audit(self, subject: str | None = None) -> list[AuditEvent]:
        """The audit trail, oldest first: all of it, or the events naming one subject."""
        if not self._store.exists():
            return []
        with self._lock, self._store.read() as tx:
            return tx.audit_events(subject)

    def verify_audit(self) -> AuditCheck:
        """Walk the hash chain: intact, or the first link that was edited, deleted or inserted.

        Then check every subject, consent and template against its MAC or sealed binding: a
        row edited outside consentmatch makes the check fail too (`broken_at` None, `problem`
        names the row).
        """
        with self._lock, self._store.read() as tx:
            check = tx.verify_audit()
            row = tx.check_all() if check.intact else None
        if row is not None:
            return AuditCheck(False, check.events, check.head,
                              problem=f"{row} fails its integrity check (edited outside consentmatch)")
        return check

    def export(self, subject: str, *, actor: str | None = None) -> dict[str, Any]:
        """A subject access bundle: consents, template metadata (no embeddings), retention, audit events.

        Raises:
            SubjectNotFoundError: nothing is held about this subject.
        """
        name = _check_name(subject, "subject name")
        now = self._now()
        with self._lock, self._store.write() as tx:
            subject_id = tx.subject_id(name)
            if subject_id is None and not tx.audit_events(name):
                raise SubjectNotFoundError(f"Nothing is held about '{name}' in this gallery.")
            tx.append_audit(at=now, actor=self._who(actor), action="export", subject=name)
            retention = next((r for r in tx.retention() if r[0] == subject_id), None)
            return {
                "subject": name,
                "exported_at": now.isoformat(),
                "gallery": str(self.path),
                "consents": [c.to_dict() for c in tx.consent_records(now, subject_id=subject_id)]
                if subject_id is not None else [],
                "templates": tx.template_rows(subject_id) if subject_id is not None else [],
                "retention": {"destroy_by": retention[3].isoformat() if retention and retention[3] else None,
                              "rule": retention[4] if retention else None},
                "audit": [e.to_dict() for e in tx.audit_events(name)],
            }

    def key_info(self) -> KeyInfo:
        """Where this gallery's keys are and how many subject data keys exist (never the keys)."""
        with self._lock, self._store.read():
            keys = self._store.keys
            return KeyInfo(gallery_id=keys.gallery_id or "", key_source=keys.source, key_dir=str(keys.key_dir),
                           data_keys=len(keys.key_ids()))

    def rotate_key(self, *, new_key: bytes | str | None = None, actor: str | None = None) -> KeyInfo:
        """Re-wrap every subject's data key under a new gallery key (audited).

        A key file is replaced in place, crash-safely. A key held by the caller (the `key`
        argument or CONSENTMATCH_KEY) is replaced by `new_key`, which the caller must have
        stored first (a rotation cut short would otherwise lose it).

        Raises:
            EncryptionKeyError: a caller-held key without `new_key`.
        """
        fresh = parse_key(new_key, "new_key") if new_key is not None else None
        with self._lock:
            with self._store.write() as tx:
                keys = self._store.keys
                # The event is kept in the key store with the rotation until this transaction
                # commits: a crash in between leaves it for the next open to record (Store._open_keys).
                event = tx.rotation_event(self._now(), self._who(actor), len(keys.key_ids()), keys.source)
                keys.rotate(fresh, record=event)
                tx.record_rotation(event)
            keys.rotation_recorded(event)
            return KeyInfo(gallery_id=keys.gallery_id or "", key_source=keys.source, key_dir=str(keys.key_dir),
                           data_keys=len(keys.key_ids()))

    def subjects(self) -> list[SubjectInfo]:
        """Everyone enrolled, by name, with template count and consents (never templates)."""
        if not self._store.exists():
            return []
        with self._lock, self._store.read() as tx:
            return tx.subjects(self._now())

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _subject_id(tx: Transaction, name: str) -> int:
        found = tx.subject_id(name)
        if found is None:
            raise SubjectNotFoundError(f"'{name}' is not enrolled in this gallery: check the name with `consentmatch subjects`.")
        return found

    @staticmethod
    def _subject_name(tx: Transaction, subject_id: int) -> str:
        return tx.subject_names([subject_id])[subject_id]

    def _check_consent(self, consent: Consent, now: datetime) -> None:
        if not consent.is_active(now):
            raise ConsentError(
                f"Consent '{consent.reference}' expired on {consent.expires_at:%Y-%m-%d}: record a current consent first."
            )
        statute = EVIDENCE_REQUIRED.get(consent.jurisdiction or "")
        if statute and not consent.evidence_sha256:
            raise ConsentError(
                f"Consent '{consent.reference}' ({consent.jurisdiction}) needs a written release under {statute}: "
                "give its file as evidence (--evidence FILE; only its SHA-256 is kept)."
            )

    def _check_enrollable(
        self, tx: Transaction, name: str, consent: Consent | str, email: str | None, now: datetime
    ) -> None:
        if tx.is_opted_out(name, tx.email_hashes(email) if email else []):
            raise ConsentError(
                f"'{name}' is on the do-not-enroll list (opt-out): they may not be enrolled; "
                "only their own request can remove the opt-out."
            )
        if isinstance(consent, str):
            self._existing_consent(tx, name, consent, now)
        else:
            owner = tx.consent_owner(consent.reference)
            if owner is not None and owner != name:
                raise reference_taken(consent.reference, owner)

    def _existing_consent(self, tx: Transaction, name: str, reference: str, now: datetime) -> tuple[int, int, str]:
        records = tx.consent_records(now, reference=reference)
        if not records:
            raise ConsentError(f"No consent has the reference '{reference}': record it first (`consentmatch consent grant`).")
        if records[0].subject != name:
            raise reference_taken(reference, records[0].subject)
        if not records[0].active:
            state = "was revoked" if records[0].revoked_at else "is not active (expired or past retention)"
            raise ConsentError(f"Consent '{reference}' {state}: record a current consent first.")
        subject_id = self._subject_id(tx, name)
        consent_id = tx.consent_id(reference)
        assert consent_id is not None  # its record was just read in this transaction
        return subject_id, consent_id, reference

    def _record(
        self, tx: Transaction, name: str, consent: Consent, email: str | None, now: datetime, actor: str
    ) -> tuple[int, int]:
        """Record a consent (with opt-out check and audit); returns (subject id, consent id)."""
        hashes = tx.email_hashes(email) if email else []
        if tx.is_opted_out(name, hashes):
            raise ConsentError(f"'{name}' is on the do-not-enroll list (opt-out): no consent can be recorded for them.")
        subject_id = tx.ensure_subject(name, now)
        with tx.renewing(subject_id, strict=True):
            consent_id = tx.record_consent(subject_id, consent, now, hashes[0] if hashes else None)
            self._refresh_retention(tx, subject_id, now)
        tx.append_audit(at=now, actor=actor, action="consent-grant", subject=name, details={
            "consent": consent.reference, "purposes": list(consent.purposes), "jurisdiction": consent.jurisdiction,
            "expires_at": consent.expires_at.isoformat() if consent.expires_at else None, "signer": consent.signer,
            "evidence_sha256": consent.evidence_sha256, "notice_version": consent.notice_version,
        })
        return subject_id, consent_id

    @staticmethod
    def _refresh_retention(tx: Transaction, subject_id: int, now: datetime) -> None:
        terms, enrolled, last = tx.retention_terms(subject_id)
        date, rule = destroy_by(terms, enrolled, last)
        tx.set_retention(subject_id, date, rule)

    def _enrollment_face(
        self, photo: PhotoInput, min_face_px: int, excluded: Sequence[str], level: str
    ) -> tuple[str, DetectedFace]:
        decoded = load_photo(photo, strict=True)  # a corrupt JPEG that decodes is refused, not enrolled
        self._check_region(decoded, excluded)
        found = self._encoder.encode(decoded, min(PROBE_MIN_FACE_PX, min_face_px))
        face = single_face(found, decoded.name, min_face_px)
        if level != "off":
            check_quality(decoded, face, level=level, for_enrollment=True, min_face_px=min_face_px)
        return decoded.sha256, face

    def _check_duplicates(self, name: str, photos: Sequence[PhotoInput], faces: Sequence[DetectedFace],
                          tolerance: float) -> None:
        """Refuse a face that is already enrolled under another subject: one person, one identity."""
        if not self._store.exists():
            return
        with self._lock, self._store.read() as tx:
            index = self._current_index(tx, tx.generation())
            if not len(index):
                return
            own = tx.subject_id(name)
            own_count = tx.template_count(own) if own is not None else 0
            # The nearest templates beyond the subject's own: k = own + 1 always reaches another subject's.
            distances, ids = index.search(np.stack([f.encoding for f in faces]), own_count + 1)
            for photo, row_distances, row_ids in zip(photos, distances, ids):
                hits = [(float(d), int(t)) for d, t in zip(row_distances, row_ids) if t >= 0 and d <= tolerance]
                owners = tx.template_owners([t for _, t in hits])
                other = next(((d, owners[t]) for d, t in hits if owners.get(t, name) != name), None)
                if other is not None:
                    distance, other_name = other
                    raise PolicyError(
                        f"'{photo_name(photo)}' shows enrolled subject '{other_name}' (distance {distance:.2f} <= "
                        f"{tolerance}): one person may not be enrolled under two names; pass allow_duplicate=True "
                        "(--allow-duplicate) for twins or an intended duplicate."
                    )

    @staticmethod
    def _check_region(photo: Photo, excluded: Sequence[str]) -> None:
        if not excluded or photo.gps is None:
            return
        from .geo import region_codes

        hit = next((code for code in region_codes(*photo.gps) if code in excluded), None)
        if hit:
            raise _RegionError(
                f"'{photo.name}' was taken in {hit} (by its GPS metadata), a region this gallery's policy excludes: "
                "use a photo taken elsewhere."
            )

    def _search_terms(
        self, purpose: str | None, tolerance: float | None
    ) -> tuple[str | None, float, dict[str, Any]]:
        """The purpose and tolerance of a search, with the policy's rules and defaults; and the policy."""
        if not self._store.exists():
            raise GalleryNotFoundError(f"No gallery at '{self.path}': enroll someone first, or check --gallery.")
        with self._lock, self._store.read() as tx:
            policy = tx.policy()
        if purpose is None and policy["require_purpose"]:
            raise InvalidArgumentError(
                "This gallery's policy requires a purpose for every search: pass purpose=... (CLI: --purpose P)."
            )
        label = check_purpose(purpose) if purpose is not None else None
        return label, check_tolerance(policy["tolerance"] if tolerance is None else tolerance), policy

    def _record_search(
        self, action: str, purpose: str | None, actor: str | None, matched: dict[int, str], details: dict[str, Any],
        *, subject: str | None = None,
    ) -> None:
        """Audit a match or verify; the subjects it returned count as an interaction (BIPA retention).

        `subject`: the one the call named (verify), recorded whether or not it matched.
        """
        now = self._now()
        with self._lock, self._store.write(bump=False) as tx:
            for subject_id in matched:
                with tx.renewing(subject_id, strict=False):
                    if tx.touch(subject_id, now):  # another process may have erased them meanwhile
                        self._refresh_retention(tx, subject_id, now)
            tx.append_audit(at=now, actor=self._who(actor), action=action, purpose=purpose,
                         subject=subject or (next(iter(matched.values())) if len(matched) == 1 else None),
                         details={**details, "subjects": sorted(matched.values())})

    @contextmanager
    def _refusals(self, action: str, subject: str | None, purpose: str | None, actor: str | None) -> Iterator[None]:
        """Record the call in the audit trail when it is refused (`_record_refusal`), then let the error go on."""
        try:
            yield
        except _REFUSALS as exc:
            self._record_refusal(action, subject, purpose, actor, exc)
            raise

    def _record_refusal(
        self, action: str, subject: str | None, purpose: str | None, actor: str | None, error: Exception
    ) -> None:
        """Audit a refused call: outcome "refused", the error's class and message (never a face or
        a location), under the subject named. In its own transaction, never creating a gallery
        file; a record that cannot be written never hides the refusal itself."""
        if not isinstance(error, _REFUSALS) or not self._store.exists():
            return
        try:
            name = _check_name(subject, "subject name") if subject is not None else None
        except InvalidArgumentError:
            name = None
        kind = next(c.__name__ for c in type(error).__mro__ if not c.__name__.startswith("_"))
        reason = _REGION_REASON if isinstance(error, _RegionError) else str(error)
        with suppress(Exception), self._lock, self._store.write(bump=False) as tx:  # the refusal is what the caller must see
            tx.append_audit(at=self._now(), actor=self._who(actor), action=action, subject=name, purpose=purpose,
                         details={"outcome": "refused", "error": kind, "reason": reason})

    def _optout_key(self, subject: str | None, email: str | None, *, create: bool) -> tuple[str, str]:
        if (subject is None) == (email is None):
            raise InvalidArgumentError("Give exactly one of a subject or an e-mail (CLI: --subject S or --email E).")
        if subject is not None:
            return "subject", _check_name(subject, "subject name")
        address = (email or "").strip().lower()
        if "@" not in address or len(address) > 320:
            raise InvalidArgumentError(f"{email!r} is not an e-mail address.")
        if not create and not self._store.exists():
            raise GalleryNotFoundError(f"No gallery at '{self.path}'.")
        return "email", address

    def _optout_values(self, tx: Transaction, kind: str, value: str) -> list[str]:
        """What the registry holds for an entry: the subject, or the e-mail's hashes (the one stored now first)."""
        return tx.email_hashes(value) if kind == "email" else [value]

    def _erase(
        self, find: Callable[[Transaction], int], reason: str,
        change: Callable[[Transaction, int, int], int],
    ) -> Erasure:
        """The one way templates are erased. `find(tx)` names the subject's id inside the
        erasure's transaction; `change(tx, subject_id, templates)` deletes the rows and audits
        there too, returning the consents it removed.

        Order, in one write transaction: find the subject -> read its templates (for the
        post-check) and data key id -> delete rows -> destroy that data key as the last step ->
        commit; then the WAL checkpoint and the index. What is read, deleted and shredded is
        one subject, by id: a forget and re-enrollment of the same name by another process
        cannot slip between them. A write the gallery refuses (read-only, locked) shreds
        nothing; from the shred on, no crash and no old copy of the gallery makes the templates
        readable again (rows left by a crash between shred and commit are dropped at the next open).

        Raises:
            SubjectNotFoundError: nobody of that name (ConsentError: no consent of that reference).
        """
        with self._lock:
            if self._index is None:  # erase from the snapshot too, so close saves it current
                with self._store.read() as tx:
                    self._index = self._snapshot_index(tx, tx.generation())
            with self._store.write() as tx:
                before = tx.generation()
                subject_id = find(tx)
                name = self._subject_name(tx, subject_id)
                ids, vectors = tx.subject_templates(subject_id, strict=False)
                key = tx.subject_key_id(subject_id)
                with tx.renewing(subject_id, strict=False):  # an erasure is never refused
                    consents = change(tx, subject_id, len(ids))
                # Index snapshots hold the templates too: their keys go with the subject's, at once.
                tx.shred([key, *sorted(self._store.keys.index_key_ids())])
            self._saved_state = None
            snapshot.discard(self._snapshot)
            self._store.checkpoint()
            removed = 0

            def remove(index: FaceIndex) -> None:
                nonlocal removed
                removed = index.remove(ids)

            self._synced(before, remove)
            return Erasure(subject=name, templates_removed=len(ids), index_entries_removed=removed,
                           consents_removed=consents, reason=reason, verified=self._post_check(ids, vectors))

    def _post_check(self, ids: NDArray[np.int64], vectors: NDArray[np.float32]) -> bool:
        """No row of the removed templates is left, and searching the live index with them finds
        none of them. (Without a live index there is nothing to search: any index built later
        comes from the store, which holds none of them.)"""
        if not len(ids):
            return True
        with self._store.read() as tx:
            left = tx.templates_left(ids.tolist())
        index = self._index
        if index is None or not len(index):
            return bool(left == 0)
        _, found = index.search(vectors, min(len(index), 10))
        return bool(left == 0 and not np.isin(found, ids).any() and not any(index.contains(int(i)) for i in ids))

    def _synced(self, before: int, change: Callable[[FaceIndex], None] | None = None) -> None:
        """Apply a committed write to the in-memory index, or drop the index if it was already stale.

        `before` is the store generation the write started from; `change` edits the index
        (None: the write changed consents or policy, not templates).
        """
        self._searchable.clear()
        if self._index is not None and self._index.generation == before:
            if change is not None:
                change(self._index)
            self._index.generation = before + 1
        else:
            self._index = None

    def _current_index(self, tx: Transaction, generation: int) -> FaceIndex:
        """The index for this store generation: the live one, else the snapshot when it holds
        exactly the store's templates, else rebuilt from the store."""
        if self._index is None or self._index.generation != generation:
            index = self._snapshot_index(tx, generation)
            if index is None:
                index = FaceIndex(generation)
                index.add(*tx.all_templates())
            self._index = index
        return self._index

    def _snapshot_index(self, tx: Transaction, generation: int) -> FaceIndex | None:
        """The saved index, when it holds exactly the store's templates."""
        state = tx.templates_state()
        index = snapshot.load(self._snapshot, self._store.keys, state, generation)
        if index is not None:
            self._saved_state = state
        return index

    def _save_snapshot(self) -> None:
        """Save the live index when it is large and the snapshot on disk is not of its templates.

        Under the write lock, so no erasure runs between the check and the save. A snapshot
        is a cache: one that cannot be written is skipped (the next open rebuilds).
        """
        index = self._index
        if index is None or len(index) < snapshot.SNAPSHOT_FROM or not self._store.exists():
            return
        try:
            with self._store.write(bump=False) as tx:
                state = tx.templates_state()
                if tx.generation() == index.generation and state != self._saved_state:
                    snapshot.save(self._snapshot, index, self._store.keys, state)
                    self._saved_state = state
        except (OSError, ConsentMatchError):
            pass

    def _search_state(self, purpose: str | None, tx: Transaction | None = None) -> tuple[FaceIndex, Searchable]:
        """The current index and the templates searchable for `purpose`, loaded when stale (in a
        snapshot of the store: `tx`, else a new one)."""
        if tx is None:
            with self._lock, self._store.read() as fresh:
                return self._search_state(purpose, fresh)
        generation = tx.generation()
        return self._current_index(tx, generation), self._searchable_for(tx, purpose, generation)

    def _searchable_for(self, tx: Transaction, purpose: str | None, generation: int) -> Searchable:
        now = self._now()
        cached = self._searchable.get(purpose)
        if cached is not None:
            cached_generation, searchable = cached
            if cached_generation == generation and (searchable.valid_until is None or now < searchable.valid_until):
                return searchable
        searchable = tx.searchable(purpose, now)
        searchable.template_ids.setflags(write=False)  # FaceIndex reuses its id bitmap while this array lives
        self._searchable[purpose] = (generation, searchable)
        return searchable


class _RegionError(PolicyError):
    """A photo taken in an excluded region: audited without the region (the trail holds no location)."""


_REGION_REASON = "a photo was taken in a region this gallery's policy excludes (by its GPS metadata)"

#: Errors that refuse a call (recorded in the audit trail); usage and storage errors are not refusals.
_REFUSALS = (ConsentError, SubjectNotFoundError, PolicyError, FaceError, ImageError)


def _not_enrolled(name: str, purpose: str | None) -> NoActiveEnrollmentError:
    """verify's one answer for a subject not enrolled, without templates, or without consent."""
    return NoActiveEnrollmentError(
        f"No active enrollment of '{name}' for purpose '{purpose or 'any'}': the subject is not enrolled, or has no "
        "active consent that lists this purpose; check the name and the purpose."
    )


@dataclass(frozen=True)
class _Admission:
    """An enrollment past its consent, opt-out and policy checks, before any photo is read."""

    name: str
    consent: Consent | str
    email: str | None
    photos: tuple[PhotoInput, ...]
    now: datetime
    policy: dict[str, Any]
    level: str
    min_face_px: int


def _may_claim(earlier: ManifestRow, row: ManifestRow) -> bool:
    """Whether storing `earlier` can change `row`'s consent check: it claims the same reference for another subject."""
    return (
        earlier.consent is not None and row.consent is not None
        and earlier.consent.reference == row.consent.reference and earlier.subject != row.subject
    )


def _raising(error: Exception) -> Callable[[], NoReturn]:
    def finish() -> NoReturn:
        raise error

    return finish


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
