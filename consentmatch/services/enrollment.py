"""Enrollment: one subject from photos (`enroll`), or a manifest of rows (`import_manifest`).

enroll: consent check -> decode -> region check -> detect -> quality -> encode -> duplicate check
        -> store + audit (one transaction); the index cache follows the commit.
A manifest's photo work runs on a runner (`runners.py`: this process's threads, or a Ray cluster's
actors), a few rows ahead; the store work stays here, in row order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import numpy as np
from numpy.typing import NDArray

from ..consent import Consent
from ..errors import ConsentError, ConsentMatchError, InvalidArgumentError, PolicyError
from ..images import Photo, PhotoInput, load_photo, photo_name
from ..manifest import ManifestRow, read_manifest
from ..policy import ENROLL_MIN_FACE_PX, PROBE_MIN_FACE_PX, default_policy, parse_policy_value
from ..quality import check_quality, single_face
from ..results import Enrollment, ImportReport, Rejection
from ..runners import LocalRunner, Runner, Submit
from ..storage import Transaction, unknown_reference
from ..vision.types import DetectedFace, Encoder
from .consents import check_consent, check_enrollable, existing_consent, recording
from .context import Context, check_name, check_new_name, region_error

__all__ = ["COMMIT_BATCH", "COMMIT_WAIT_S", "PhotoJob", "Progress", "enroll", "import_manifest", "photo_work"]

Progress = Callable[[int, int], None]


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


@dataclass(frozen=True)
class PhotoJob:
    """An admitted enrollment's photo work, as plain data a worker elsewhere can run: no name,
    consent or e-mail."""

    photos: tuple[PhotoInput, ...]
    min_face_px: int
    excluded_regions: tuple[str, ...]
    level: str


Faces = list[tuple[str, DetectedFace]]


def enroll(
    ctx: Context, name: str, photos: Sequence[PhotoInput] | PhotoInput, consent: Consent | str | None, *,
    email: str | None, min_face_px: int, quality: str | None, allow_duplicate: bool, actor: str | None,
) -> Enrollment:
    """Enroll a consenting subject from photos, all or nothing; a refusal is recorded in the audit trail.

    Each photo must hold exactly one face at least `min_face_px` wide, pass the quality bar,
    must not have been taken in a region the policy excludes (EXIF GPS), and must not match
    another enrolled subject within the policy's `duplicate_tolerance`. The consent and the
    templates are stored in one transaction.
    """
    name = check_name(name, "subject name")
    with ctx.refusals("enroll", name, None, actor):
        return _enroll(ctx, name, photos, consent, email=email, min_face_px=min_face_px, quality=quality,
                       allow_duplicate=allow_duplicate, actor=actor)


def _enroll(
    ctx: Context, name: str, photos: Sequence[PhotoInput] | PhotoInput, consent: Consent | str | None, *,
    email: str | None, min_face_px: int, quality: str | None, allow_duplicate: bool, actor: str | None,
) -> Enrollment:
    """`enroll` without recording a refusal: for `import_manifest`, which records each row's refusal itself."""
    admission = _admit(ctx, name, photos, consent, email=email, min_face_px=min_face_px, quality=quality)
    return _commit(ctx, admission, _read_faces(ctx, admission), allow_duplicate=allow_duplicate, actor=actor)


def _admit(
    ctx: Context, subject: str, photos: Sequence[PhotoInput] | PhotoInput, consent: Consent | str | None, *,
    email: str | None, min_face_px: int, quality: str | None,
) -> _Admission:
    """An enrollment's checks before any biometric processing: name, consent, opt-out, policy.

    Reads the store, never a photo: a subject without a lawful basis is refused before
    their photo is even decoded.
    """
    name = check_name(subject, "subject name")
    if consent is None:
        raise ConsentError(
            f"Enrolling '{name}' needs a recorded consent: pass Consent(reference, purposes) "
            "(CLI: --consent-ref REF --purpose P)."
        )
    now = ctx.now()
    if isinstance(consent, Consent):
        check_consent(consent, now)
    batch = [photos] if isinstance(photos, (str, bytes, os.PathLike)) else list(photos)
    if not batch:
        raise InvalidArgumentError(f"No photos given for '{name}': name at least one photo of the person.")
    policy = default_policy(ctx.settings.quality)
    if ctx.store.exists():
        with ctx.lock, ctx.store.read() as tx:
            check_enrollable(ctx, tx, name, consent, email, now)
            policy = tx.policy()
    elif isinstance(consent, str):
        raise unknown_reference(consent, to_enroll=True)
    else:
        check_new_name(name, "subject name")  # no gallery yet: every subject is new
    level = parse_policy_value("quality", quality) if quality is not None else policy["quality"]
    return _Admission(name, consent, email, tuple(batch), now, policy, level, min_face_px)


def _read_faces(ctx: Context, admission: _Admission) -> Faces:
    return photo_work(ctx.encoder, _job(admission))


def _job(admission: _Admission) -> PhotoJob:
    return PhotoJob(admission.photos, admission.min_face_px, tuple(admission.policy["excluded_regions"]),
                    admission.level)


def photo_work(encoder: Encoder, job: PhotoJob) -> Faces:
    """Each photo's SHA-256 and its one face: decode, region, detect, quality, encode.

    Reads no store and writes nothing, so it may run on any thread, or on a Ray worker
    (`runners.RayRunner`), which imports it by name.
    """
    return [_enrollment_face(encoder, p, job.min_face_px, job.excluded_regions, job.level) for p in job.photos]


def _commit(
    ctx: Context, admission: _Admission, faces: Sequence[tuple[str, DetectedFace]], *, allow_duplicate: bool,
    actor: str | None,
) -> Enrollment:
    """Store an admitted enrollment in one write transaction (the index follows it): the duplicate
    check inside it, so two writers (processes, nodes) enrolling one face under two names at once
    take turns and the second is refused."""
    with ctx.lock, ctx.store.write(create=True) as tx:
        return _store(ctx, tx, admission, faces, allow_duplicate=allow_duplicate, actor=actor, batch=[])


def _store(
    ctx: Context, tx: Transaction, admission: _Admission, faces: Sequence[tuple[str, DetectedFace]], *,
    allow_duplicate: bool, actor: str | None, batch: list[tuple[str, NDArray[np.float32]]],
) -> Enrollment:
    """Store an admitted enrollment in `tx`. `batch`: the (name, encoding) of the templates stored
    earlier in `tx`, which the index does not hold until it commits; this one's are added to it."""
    name, consent, email, now = admission.name, admission.consent, admission.email, admission.now
    hashes = check_enrollable(ctx, tx, name, consent, email, now)  # again: the store may have changed
    if not allow_duplicate:
        _check_duplicates(ctx, tx, name, admission.photos, [f for _, f in faces],
                          admission.policy["duplicate_tolerance"], batch)
    with _subject(ctx, tx, name, consent, hashes, now, ctx.who(actor)) as (subject_id, consent_id, reference):
        fresh = _not_enrolled(tx, subject_id, faces)
        ids = [tx.add_template(subject_id, consent_id, f.encoding, sha, f.box, now, detector=f.detector)
               for sha, f in fresh]
        total = tx.template_count(subject_id)
    batch.extend((name, f.encoding) for _, f in fresh)
    already = len(faces) - len(fresh)
    tx.append_audit(at=now, actor=ctx.who(actor), action="enroll", subject=name,
                    details={"consent": reference, "templates_added": len(ids), "templates_total": total,
                             "already_enrolled": already})
    return Enrollment(
        subject=name,
        templates_added=len(ids),
        templates_total=total,
        consent_reference=reference,
        photos=tuple(photo_name(p) for p in admission.photos),
        already_enrolled=already,
    )


@contextmanager
def _subject(
    ctx: Context, tx: Transaction, name: str, consent: Consent | str, hashes: Sequence[str], now: datetime, actor: str
) -> Iterator[tuple[int, int, str]]:
    """The subject and consent an enrollment's templates are stored under, (subject id, consent
    id, reference), the consent recorded first when given in full; the subject's MACs renewed and
    retention worked out after the block."""
    if isinstance(consent, Consent):
        with recording(ctx, tx, name, consent, hashes, now, actor) as (subject_id, consent_id):
            yield subject_id, consent_id, consent.reference
        return
    subject_id, consent_id, reference = existing_consent(ctx, tx, name, consent, now)
    with tx.renewing(subject_id, strict=True):
        yield subject_id, consent_id, reference
        ctx.refresh_retention(tx, subject_id, now)


def _not_enrolled(
    tx: Transaction, subject_id: int, faces: Sequence[tuple[str, DetectedFace]]
) -> list[tuple[str, DetectedFace]]:
    """The faces whose photo (by SHA-256) is not yet a template of the subject: enrolling a photo
    twice (a manifest run again) is reported as already enrolled, never stored as a second template."""
    fresh: list[tuple[str, DetectedFace]] = []
    for sha, face in faces:
        if not tx.photo_enrolled(subject_id, sha) and all(sha != seen for seen, _ in fresh):
            fresh.append((sha, face))
    return fresh


def import_manifest(
    ctx: Context, manifest: str | os.PathLike[str], *, progress: Progress | None, quality: str | None,
    allow_duplicate: bool, actor: str | None, runner: Runner | None = None,
) -> ImportReport:
    """Enroll every usable row of a manifest CSV; bad rows are reported (and audited as refused) and skipped.

    The report is the one enrolling row by row gives: while rows are stored, the photos of
    the next few are decoded and encoded by `runner` (default: a thread pool, one thread per
    CPU; `RayRunner`: a Ray cluster), and every step that earlier rows can change (the
    duplicate check, the store writes) runs here, in row order, several rows to a write
    transaction (`_store_rows`). A row's consent and opt-out are checked before its photo is
    read; a row whose consent check an earlier row still in progress could change (the same
    consent reference for another subject) waits for it, and is then enrolled here, as
    `enroll` would.
    """
    rows = read_manifest(manifest)
    enrolled: list[Enrollment] = []
    rejected: list[Rejection] = []
    unstored: dict[int, ManifestRow] = {}  # rows started ahead that may still enroll
    batch: list[tuple[int, _Ready]] = []  # rows whose photo work is done, to store together
    opened = 0.0  # when the batch's first row was ready

    def start(submit: Submit[PhotoJob, Faces], numbered: tuple[int, ManifestRow]) -> _Admitted | _Alone:
        """Admit a row and start reading its photo; returns what finishes it at its turn."""
        number, row = numbered
        try:
            if row.problem is not None:
                raise InvalidArgumentError(row.problem)
            if any(_may_claim(earlier, row) for earlier in unstored.values()):
                unstored[number] = row
                return lambda: _enroll(ctx, row.subject, [row.photo], row.consent, email=row.email,
                                       min_face_px=ENROLL_MIN_FACE_PX, quality=quality,
                                       allow_duplicate=allow_duplicate, actor=actor)
            admission = _admit(ctx, row.subject, [row.photo], row.consent, email=row.email,
                               min_face_px=ENROLL_MIN_FACE_PX, quality=quality)
        except Exception as exc:  # reported at the row's turn, as enrolling row by row would
            return _raising(exc)
        unstored[number] = row
        return _Admitted(admission, submit(_job(admission)))

    def settle(number: int, row: ManifestRow, outcome: Enrollment | ConsentMatchError) -> None:
        if isinstance(outcome, Enrollment):
            enrolled.append(outcome)
        else:
            rejected.append(Rejection(row=row.line, subject=row.subject, photo=row.photo, reason=str(outcome)))
        unstored.pop(number, None)
        if progress is not None:
            progress(len(enrolled) + len(rejected), len(rows))

    def flush() -> None:
        pending = batch[:]
        batch.clear()
        outcomes = _store_rows(ctx, [ready for _, ready in pending], allow_duplicate=allow_duplicate, actor=actor)
        for (number, ready), outcome in zip(pending, outcomes):
            settle(number, ready.row, outcome)

    runner = runner if runner is not None else LocalRunner()
    with runner.started(list(enumerate(rows)), start, photo_work, ctx.encoder, ctx.settings) as started:
        try:
            for (number, row), begun in started:
                if batch and time.monotonic() - opened >= COMMIT_WAIT_S:  # before waiting for this row's photo
                    flush()
                try:
                    if isinstance(begun, _Admitted):
                        ready = _Ready(row, begun.admission, begun.faces())
                        opened = opened if batch else time.monotonic()
                        batch.append((number, ready))
                        if len(batch) >= COMMIT_BATCH:
                            flush()
                        continue
                    flush()  # the rows before it first: the store and the audit trail keep the manifest's order
                    outcome: Enrollment | ConsentMatchError = begun()
                except ConsentMatchError as exc:  # its photo, or the row enrolled alone, refused
                    flush()
                    ctx.record_refusal("enroll", row.subject, None, actor, exc)
                    outcome = exc
                settle(number, row, outcome)
        except BaseException:  # a bug, an interrupt: the rows done before it are stored, as row by row
            flush()
            raise
        flush()
    return ImportReport(manifest=os.fspath(manifest), rows=len(rows), enrolled=tuple(enrolled), rejected=tuple(rejected))


#: An import stores up to this many rows in one write transaction...
COMMIT_BATCH = 64
#: ...and, before waiting for the next row's photo, stores a batch whose first row has waited this
#: long (seconds): the wait for that photo is not cut short.
COMMIT_WAIT_S = 0.25


@dataclass(frozen=True)
class _Admitted:
    """A manifest row admitted ahead of its turn, its photo work under way."""

    admission: _Admission
    faces: Callable[[], Faces]


#: A manifest row enrolled alone at its turn (it waits for an earlier row), or its refusal.
_Alone = Callable[[], Enrollment]


@dataclass(frozen=True)
class _Ready:
    """A manifest row admitted, its photo work done: what the store needs."""

    row: ManifestRow
    admission: _Admission
    faces: Faces


def _store_rows(
    ctx: Context, rows: Sequence[_Ready], *, allow_duplicate: bool, actor: str | None
) -> list[Enrollment | ConsentMatchError]:
    """Store admitted rows in one write transaction, in order, each as `_commit` would.

    One commit (and one key-store write for the new subjects' keys) for many rows: the driver
    of a cluster import keeps up with its workers. When a row is refused, the transaction is
    undone and the rows are stored again in three parts: those before it together, the refused
    one alone (its refusal audited in its turn), those after it together. So the gallery, the
    report and the audit trail are exactly what storing row by row gives.
    """
    if len(rows) <= 1:
        outcomes: list[Enrollment | ConsentMatchError] = []
        for ready in rows:
            try:
                outcomes.append(_commit(ctx, ready.admission, ready.faces, allow_duplicate=allow_duplicate, actor=actor))
            except ConsentMatchError as exc:
                ctx.record_refusal("enroll", ready.row.subject, None, actor, exc)
                outcomes.append(exc)
        return outcomes
    stored: list[Enrollment] = []
    try:
        with ctx.lock, ctx.store.write(create=True) as tx:
            batch: list[tuple[str, NDArray[np.float32]]] = []
            for ready in rows:
                stored.append(_store(ctx, tx, ready.admission, ready.faces, allow_duplicate=allow_duplicate,
                                     actor=actor, batch=batch))
    except ConsentMatchError:
        if len(stored) == len(rows):  # the commit itself failed: each row on its own says why
            return [outcome for ready in rows for outcome in _store_rows(ctx, [ready], allow_duplicate=allow_duplicate,
                                                                         actor=actor)]
        refused = len(stored)
        return [outcome for part in (rows[:refused], rows[refused:refused + 1], rows[refused + 1:])
                for outcome in _store_rows(ctx, part, allow_duplicate=allow_duplicate, actor=actor)]
    return list(stored)


def _enrollment_face(
    encoder: Encoder, photo: PhotoInput, min_face_px: int, excluded: Sequence[str], level: str
) -> tuple[str, DetectedFace]:
    decoded = load_photo(photo, strict=True)  # a corrupt JPEG that decodes is refused, not enrolled
    _check_region(decoded, excluded)
    found = encoder.encode(decoded, min(PROBE_MIN_FACE_PX, min_face_px))
    face = single_face(found, decoded.name, min_face_px)
    if level != "off":
        check_quality(decoded, face, level=level, for_enrollment=True, min_face_px=min_face_px)
    return decoded.sha256, face


def _check_duplicates(
    ctx: Context, tx: Transaction, name: str, photos: Sequence[PhotoInput], faces: Sequence[DetectedFace],
    tolerance: float, batch: Sequence[tuple[str, NDArray[np.float32]]],
) -> None:
    """Refuse a face that is already enrolled under another subject: one person, one identity.

    Enrolled means in the index (committed) or in `batch` (stored earlier in this transaction).
    """
    queries = np.stack([f.encoding for f in faces])
    nearest: list[list[tuple[float, str]]] = [[] for _ in faces]
    index = ctx.cache.index(tx)
    if len(index):
        own = tx.subject_id(name)
        own_count = tx.template_count(own) if own is not None else 0
        # The nearest templates beyond the subject's own: k = own + 1 always reaches another subject's.
        distances, ids = index.search(queries, own_count + 1)
        for hits, row_distances, row_ids in zip(nearest, distances, ids):
            found = [(float(d), int(t)) for d, t in zip(row_distances, row_ids) if t >= 0 and d <= tolerance]
            owners = tx.template_owners([t for _, t in found])
            hits.extend((d, owners[t]) for d, t in found if owners.get(t, name) != name)
    others = [(n, v) for n, v in batch if n != name]
    if others:
        distances = np.linalg.norm(queries[:, None, :] - np.stack([v for _, v in others])[None, :, :], axis=2)
        for hits, row in zip(nearest, distances):
            hits.extend((float(d), n) for d, (n, _) in zip(row, others) if d <= tolerance)
    for photo, hits in zip(photos, nearest):
        other = min(hits, default=None)
        if other is not None:
            distance, other_name = other
            raise PolicyError(
                f"'{photo_name(photo)}' shows enrolled subject '{other_name}' (distance {distance:.2f} <= "
                f"{tolerance}): one person may not be enrolled under two names; pass allow_duplicate=True "
                "(--allow-duplicate) for twins or an intended duplicate."
            )


def _check_region(photo: Photo, excluded: Sequence[str]) -> None:
    if not excluded or photo.gps is None:
        return
    from ..geo import region_codes

    hit = next((code for code in region_codes(*photo.gps) if code in excluded), None)
    if hit:
        raise region_error(
            f"'{photo.name}' was taken in {hit} (by its GPS metadata), a region this gallery's policy excludes: "
            "use a photo taken elsewhere."
        )


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
