"""The `Gallery` facade: enroll, match, verify, forget, subjects. It composes the other modules.

Data flows one way:
  enroll: consent check -> decode -> detect -> quality -> encode -> store (one transaction) -> index
  match:  decode -> detect -> encode -> index search among consented templates -> store lookup -> decide
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

import numpy as np

from .consent import Consent, check_purpose
from . import encoder as encoders
from .encoder import DetectedFace, Encoder
from .errors import (
    ConsentError,
    ConsentMatchError,
    GalleryNotFoundError,
    InvalidArgumentError,
    SubjectNotFoundError,
)
from .images import PhotoInput, load_photo, photo_name
from .index import FaceIndex
from .manifest import read_manifest
from .policy import (
    DEFAULT_TOLERANCE,
    DEFAULT_TOP_K,
    ENROLL_MIN_FACE_PX,
    PROBE_MIN_FACE_PX,
    check_tolerance,
    check_top_k,
)
from .quality import single_face
from .results import (
    Candidate,
    Enrollment,
    Erasure,
    FaceMatch,
    ImportReport,
    MatchResult,
    Rejection,
    SubjectInfo,
    Verification,
)
from .store import Searchable, Store, reference_taken

__all__ = ["Gallery"]

Clock = Callable[[], datetime]
Progress = Callable[[int, int], None]

def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _check_subject(subject: str) -> str:
    name = subject.strip() if isinstance(subject, str) else ""
    if not name or len(name) > 200 or any(ord(ch) < 32 for ch in name):
        raise InvalidArgumentError(
            f"{subject!r} is not a subject name: use 1-200 printable characters, e.g. the customer's person id."
        )
    return name


class Gallery:
    """A consent-gated face gallery in one SQLite file.

    The file is created on the first enrollment; reading a missing one raises
    `GalleryNotFoundError`. Safe to share between threads; several processes may open one file.

    Args:
        path: the gallery file, e.g. ``visitors.db``.
        encoder: finds and encodes faces; defaults to dlib's models, loaded on first use.
        clock: returns the current UTC time; consents expire by it (tests freeze it).

    Example:
        >>> with Gallery("visitors.db") as gallery:
        ...     gallery.enroll("alice", ["alice.jpg"], Consent("FORM-17", ["visitor-check-in"]))
        ...     result = gallery.match("door.jpg", purpose="visitor-check-in")
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        encoder: Encoder | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.path = Path(path)
        self._store = Store(self.path)
        self._encoder: Encoder = encoder if encoder is not None else encoders.default_encoder()
        self._clock = clock or _utcnow
        self._lock = threading.RLock()  # guards the index and caches; encoding runs outside it
        self._index: FaceIndex | None = None
        self._searchable: dict[str, tuple[int, Searchable]] = {}

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the SQLite connection and drop the in-memory index."""
        with self._lock:
            self._store.close()
            self._index = None
            self._searchable.clear()

    def _now(self) -> datetime:
        return self._clock().astimezone(timezone.utc)

    # -- enrollment ------------------------------------------------------------------------

    def enroll(
        self,
        subject: str,
        photos: Sequence[PhotoInput] | PhotoInput,
        consent: Consent | None,
        *,
        min_face_px: int = ENROLL_MIN_FACE_PX,
    ) -> Enrollment:
        """Enroll a consenting subject from one or more photos, all or nothing.

        Each photo must hold exactly one face at least `min_face_px` wide. The consent is
        recorded with the templates in one transaction; a later enrollment under the same
        reference updates that record.

        Args:
            subject: the customer's name or id for the person.
            photos: paths (or encoded bytes) of photos of this person only.
            consent: the recorded consent; None is refused.

        Returns:
            What was stored.

        Raises:
            ConsentError: no consent, an expired one, or a reference owned by another subject.
            ImageError, FaceError: a photo cannot be used; nothing is stored.
        """
        name = _check_subject(subject)
        if consent is None:
            raise ConsentError(
                f"Enrolling '{name}' needs a recorded consent: pass Consent(reference, purposes) "
                "(CLI: --consent-ref REF --purpose P)."
            )
        now = self._now()
        if not consent.is_active(now):
            raise ConsentError(
                f"Consent '{consent.reference}' expired on {consent.expires_at:%Y-%m-%d}: record a current consent first."
            )
        batch = [photos] if isinstance(photos, (str, bytes, os.PathLike)) else list(photos)
        if not batch:
            raise InvalidArgumentError(f"No photos given for '{name}': name at least one photo of the person.")
        if self._store.exists():
            self._check_reference(name, consent)  # before any biometric processing
        faces: list[tuple[str, DetectedFace]] = []
        for photo in batch:
            decoded = load_photo(photo)
            found = self._encoder.encode(decoded, min(PROBE_MIN_FACE_PX, min_face_px))
            faces.append((decoded.sha256, single_face(found, decoded.name, min_face_px)))
        with self._lock:
            with self._store.write(create=True) as conn:
                before = Store.generation(conn)
                subject_id = Store.ensure_subject(conn, name, now)
                consent_id = Store.record_consent(conn, subject_id, consent, now)
                ids = [Store.add_template(conn, subject_id, consent_id, f.encoding, sha, f.box, now) for sha, f in faces]
                total = Store.template_count(conn, subject_id)
            self._synced(before, lambda index: index.add(np.array(ids), np.stack([f.encoding for _, f in faces])))
        return Enrollment(
            subject=name,
            templates_added=len(ids),
            templates_total=total,
            consent_reference=consent.reference,
            photos=tuple(photo_name(p) for p in batch),
        )

    def _check_reference(self, name: str, consent: Consent) -> None:
        with self._lock, self._store.read() as conn:
            owner = Store.consent_owner(conn, consent.reference)
        if owner is not None and owner != name:
            raise reference_taken(consent.reference, owner)

    def import_manifest(self, manifest: str | os.PathLike[str], *, progress: Progress | None = None) -> ImportReport:
        """Enroll every usable row of a manifest CSV; bad rows are reported and skipped.

        Columns: ``subject,photo,consent_ref,purposes,expires,jurisdiction`` (purposes
        `;`-separated; photo paths absolute or relative to the manifest). Each row enrolls on
        its own, so a bad row costs only itself.

        Args:
            progress: called with (rows done, rows in all) after each row.

        Raises:
            ManifestError: the file cannot be read or lacks a required column (nothing enrolled).
        """
        rows = read_manifest(manifest)
        enrolled: list[Enrollment] = []
        rejected: list[Rejection] = []
        for done, row in enumerate(rows, start=1):
            try:
                if row.problem is not None:
                    raise InvalidArgumentError(row.problem)
                enrolled.append(self.enroll(row.subject, [row.photo], row.consent))
            except ConsentMatchError as exc:
                rejected.append(Rejection(row=row.line, subject=row.subject, photo=row.photo, reason=str(exc)))
            if progress is not None:
                progress(done, len(rows))
        return ImportReport(manifest=os.fspath(manifest), rows=len(rows), enrolled=tuple(enrolled), rejected=tuple(rejected))

    # -- search ----------------------------------------------------------------------------

    def match(
        self,
        photo: PhotoInput,
        *,
        purpose: str,
        tolerance: float = DEFAULT_TOLERANCE,
        top_k: int = DEFAULT_TOP_K,
    ) -> MatchResult:
        """1:N: who, among the subjects consented for `purpose`, is each face of the probe.

        Args:
            photo: the probe; every face in it is matched.
            purpose: only subjects whose active consent lists it are searched.
            tolerance: the largest Euclidean distance that counts as the same person.
                Lower is stricter; 0.6 is dlib's typical best.
            top_k: how many nearest subjects to list per face, each once.

        Returns:
            A `MatchResult`; a face with no subject within the tolerance has `subject=None`.

        Raises:
            ImageError: the probe cannot be read. GalleryNotFoundError: no gallery file.
        """
        label = check_purpose(purpose)
        tolerance, top_k = check_tolerance(tolerance), check_top_k(top_k)
        if not self._store.exists():
            raise GalleryNotFoundError(f"No gallery at '{self.path}': enroll someone first, or check --gallery.")
        decoded = load_photo(photo)
        faces = self._encoder.encode(decoded, PROBE_MIN_FACE_PX)
        results: list[FaceMatch] = []
        with self._lock, self._store.read() as conn:
            generation = Store.generation(conn)
            index = self._current_index(conn, generation)
            searchable = self._searchable_for(conn, label, generation)
            if faces and len(searchable.template_ids):
                k = min(len(searchable.template_ids), top_k * searchable.max_per_subject)
                queries = np.stack([f.encoding for f in faces])
                distances, ids = index.search(queries, k, searchable.template_ids)
                positions = np.searchsorted(searchable.template_ids, np.maximum(ids, 0))
                owners = searchable.subject_ids[np.minimum(positions, len(searchable.subject_ids) - 1)]
                nearest = [_distinct(owners[row], distances[row], ids[row], top_k) for row in range(len(faces))]
                names = Store.subject_names(conn, sorted({s for row in nearest for s, _ in row}))
            else:
                nearest, names = [[] for _ in faces], {}
        for face, row in zip(faces, nearest):
            candidates = tuple(Candidate(names[s], d) for s, d in row)
            best = candidates[0] if candidates and candidates[0].distance <= tolerance else None
            results.append(
                FaceMatch(
                    box=face.box,
                    subject=best.subject if best else None,
                    distance=best.distance if best else None,
                    candidates=candidates,
                )
            )
        return MatchResult(image=decoded.name, faces=tuple(results), purpose=label, tolerance=tolerance)

    def verify(
        self,
        subject: str,
        photo: PhotoInput,
        *,
        purpose: str,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> Verification:
        """1:1: is the one face in the probe this subject (e.g. before a large transfer)?

        The distance is to the subject's nearest template, computed exactly.

        Raises:
            SubjectNotFoundError: not enrolled. ConsentError: no active consent for `purpose`.
            ImageError, NoFaceError, MultipleFacesError: the probe must hold exactly one face.
        """
        name = _check_subject(subject)
        label = check_purpose(purpose)
        tolerance = check_tolerance(tolerance)
        with self._lock, self._store.read() as conn:  # consent first: no biometric work without it
            subject_id = self._subject_id(conn, name)
            if label not in Store.active_purposes(conn, subject_id, self._now()):
                raise ConsentError(
                    f"'{name}' has no active consent for purpose '{label}': record one that lists it, "
                    "or use a purpose the subject consented to."
                )
        decoded = load_photo(photo)
        face = single_face(self._encoder.encode(decoded, PROBE_MIN_FACE_PX), decoded.name)
        with self._lock, self._store.read() as conn:
            templates = Store.subject_templates(conn, self._subject_id(conn, name))
        if not len(templates):
            raise SubjectNotFoundError(f"'{name}' has no templates: enroll a photo of the person first.")
        distance = float(np.linalg.norm(templates - face.encoding, axis=1).min())
        return Verification(
            subject=name, image=decoded.name, match=distance <= tolerance, distance=distance, tolerance=tolerance, box=face.box
        )

    # -- erasure and listing ---------------------------------------------------------------

    def forget(self, subject: str) -> Erasure:
        """Erase a subject: templates, consent records and index entries, at once and for good.

        Raises:
            SubjectNotFoundError: the subject is not enrolled.
        """
        name = _check_subject(subject)
        removed_from_index = 0
        with self._lock:
            with self._store.write() as conn:
                before = Store.generation(conn)
                ids, consents = Store.delete_subject(conn, self._subject_id(conn, name))

            def remove(index: FaceIndex) -> None:
                nonlocal removed_from_index
                removed_from_index = index.remove(ids)

            self._synced(before, remove)
            if self._index is not None and any(self._index.contains(int(i)) for i in ids):
                raise AssertionError("erased templates remain in the index")  # never expected: a bug, loudly
        return Erasure(
            subject=name, templates_removed=len(ids), index_entries_removed=removed_from_index, consents_removed=consents
        )

    def subjects(self) -> list[SubjectInfo]:
        """Everyone enrolled, by name, with template count and consents (never templates)."""
        if not self._store.exists():
            return []
        with self._lock, self._store.read() as conn:
            return Store.subjects(conn, self._now())

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _subject_id(conn: sqlite3.Connection, name: str) -> int:
        found = Store.subject_id(conn, name)
        if found is None:
            raise SubjectNotFoundError(f"'{name}' is not enrolled in this gallery: check the name with `consentmatch subjects`.")
        return found

    def _synced(self, before: int, change: Callable[[FaceIndex], None]) -> None:
        """Apply a committed write to the in-memory index, or drop the index if it was already stale."""
        self._searchable.clear()
        if self._index is not None and self._index.generation == before:
            change(self._index)
            self._index.generation = before + 1
        else:
            self._index = None

    def _current_index(self, conn: sqlite3.Connection, generation: int) -> FaceIndex:
        """The index for this store generation, rebuilt from the store when missing or stale."""
        if self._index is None or self._index.generation != generation:
            index = FaceIndex(generation)
            index.add(*Store.all_templates(conn))
            self._index = index
        return self._index

    def _searchable_for(self, conn: sqlite3.Connection, purpose: str, generation: int) -> Searchable:
        now = self._now()
        cached = self._searchable.get(purpose)
        if cached is not None:
            cached_generation, searchable = cached
            if cached_generation == generation and (searchable.valid_until is None or now < searchable.valid_until):
                return searchable
        searchable = Store.searchable(conn, purpose, now)
        self._searchable[purpose] = (generation, searchable)
        return searchable


def _distinct(
    owners: np.ndarray, distances: np.ndarray, ids: np.ndarray, top_k: int
) -> list[tuple[int, float]]:
    """The first `top_k` distinct subjects of a nearest-first row, each at its nearest template."""
    seen: dict[int, float] = {}
    for owner, distance, template in zip(owners.tolist(), distances.tolist(), ids.tolist()):
        if template < 0 or len(seen) == top_k:
            break
        seen.setdefault(owner, distance)
    return list(seen.items())
