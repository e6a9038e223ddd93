"""Accuracy on the customer's own people: 1:1 pairs, open-set 1:N, and a calibrated tolerance.

`score_pairs` reads a PAIRS.csv (`file_x,file_y,same`) and encodes each distinct photo once;
`evaluate` and `calibrate` are pure functions of the distances it returns (`evaluate_metrics`),
and `plot` draws them (`evaluate_plot`). `evaluate_identities` runs an open-set 1:N test on a
folder per person, in memory. The words are ISO/IEC 19795-1's: FMR and FNMR for 1:1, FPIR and
FNIR for 1:N, failure to enrol for a photo that gives no usable face. A pair matches when its
distance is at most the tolerance, as in the gallery.

This module reads and encodes; every name of the evaluation is importable from here.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from . import vision
from .errors import FaceError, ImageError, ManifestError
from .evaluate_metrics import (
    FMR_TARGETS,
    Calibration,
    Comparisons,
    Evaluation,
    Failure,
    Identification,
    Scores,
    calibrate,
    check_target_fmr,
    equal_error_rate,
    evaluate,
    open_set,
    rates,
    tolerance_for_fmr,
)
from .evaluate_groups import (
    AttributeReport,
    Differential,
    Distribution,
    GroupCalibration,
    GroupEvaluation,
    GroupPairRates,
    GroupRates,
    Groups,
    GroupTolerance,
    Rate,
    calibrate_groups,
    clopper_pearson,
    evaluate_groups,
)
from .evaluate_plot import plot, plot_groups
from .images import load_photo
from .manifest import open_csv, resolve_path
from .policy import DEFAULT_TOLERANCE, PROBE_MIN_FACE_PX, check_tolerance
from .pool import pooled
from .quality import single_face
from .settings import Settings
from .vision.types import DIMENSIONS, DetectedFace, Encoder

__all__ = [
    "FMR_TARGETS",
    "PAIR_COLUMNS",
    "AttributeReport",
    "Calibration",
    "Comparisons",
    "Differential",
    "Distribution",
    "Evaluation",
    "Failure",
    "GroupCalibration",
    "GroupEvaluation",
    "GroupPairRates",
    "GroupRates",
    "GroupTolerance",
    "Groups",
    "Identification",
    "Pair",
    "Rate",
    "Scores",
    "calibrate",
    "calibrate_groups",
    "check_target_fmr",
    "clopper_pearson",
    "compare_identities",
    "compare_pairs",
    "equal_error_rate",
    "evaluate",
    "evaluate_groups",
    "evaluate_identities",
    "identify",
    "open_set",
    "plot",
    "plot_groups",
    "rates",
    "read_groups",
    "read_pairs",
    "score_pairs",
    "tolerance_for_fmr",
]

PAIR_COLUMNS = ("file_x", "file_y", "same")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
#: In an identities folder, every UNENROLLED_EVERY-th person (in name order) is never enrolled.
UNENROLLED_EVERY = 3

Progress = Callable[[int, int], None]
_YES = {"yes": True, "y": True, "true": True, "1": True, "no": False, "n": False, "false": False, "0": False}


@dataclass(frozen=True)
class Pair:
    """One row of PAIRS.csv, paths resolved against the CSV's folder."""

    row: int
    file_x: str
    file_y: str
    same: bool


def read_pairs(pairs_csv: str | os.PathLike[str]) -> tuple[list[Pair], list[Failure]]:
    """The pairs of a PAIRS.csv, and its rows that cannot be used (with their line numbers).

    Columns `file_x,file_y,same`; `same` is yes/no, true/false or 1/0; paths are absolute or
    relative to the CSV's folder.

    Raises:
        ManifestError: the file cannot be read or lacks a column.
    """
    path = Path(pairs_csv)
    reader = open_csv(path, "Pairs file", PAIR_COLUMNS, ",".join(PAIR_COLUMNS))
    pairs: list[Pair] = []
    failures: list[Failure] = []
    try:
        for record in reader:
            cells = {key: (value or "").strip() for key, value in record.items() if isinstance(key, str)}
            x, y, same = cells.get("file_x", ""), cells.get("file_y", ""), cells.get("same", "").lower()
            if not x or not y:
                failures.append(Failure(x or y, "a pair needs two photos: file_x and file_y", reader.line_num))
            elif same not in _YES:
                failures.append(Failure(x, f"same is {cells.get('same')!r}: use yes/no, true/false or 1/0", reader.line_num))
            else:
                pairs.append(Pair(reader.line_num, resolve_path(x, path.parent), resolve_path(y, path.parent), _YES[same]))
    except csv.Error as exc:
        raise ManifestError(f"Pairs file '{path}' is not valid CSV ({exc}).") from None
    return pairs, failures


def read_groups(groups_csv: str | os.PathLike[str]) -> Groups:
    """GROUPS.csv: a `photo` or a `subject` column, then one column per attribute.

    `photo` paths are absolute or relative to the CSV's folder and name the same files as
    PAIRS.csv (or the identities folder); a `subject` is the name of the folder holding a
    person's photos (DIR/NAME/photo.jpg). Every other column is an attribute (sex, age band,
    self-reported ethnicity...), its values the groups; an empty cell is no label.

    Raises:
        ManifestError: the file cannot be read, lacks a key or an attribute column, names a
            photo or subject twice, or a column has too many values to be a grouping.
    """
    path = Path(groups_csv)
    hint = "photo (or subject) then one column per attribute, e.g. photo,sex,age_band"
    reader = open_csv(path, "Groups file", (), hint)
    header = list(reader.fieldnames or [])
    keys = [name for name in ("photo", "subject") if name in header]
    attributes = tuple(name for name in header if name and name not in ("photo", "subject"))
    if len(keys) != 1 or not attributes:
        raise ManifestError(f"Groups file '{path}' has the columns {', '.join(header) or 'none'}: its header must be {hint}.")
    if len(set(attributes)) != len(attributes):
        raise ManifestError(f"Groups file '{path}' names a column twice: give each attribute one column.")
    key = keys[0]
    labels: dict[str, tuple[str | None, ...]] = {}
    seen: dict[str, int] = {}
    try:
        for record in reader:
            cells = {name: (value or "").strip() for name, value in record.items() if isinstance(name, str)}
            name = cells.get(key, "")
            if not name:
                raise ManifestError(f"Groups file '{path}', line {reader.line_num}: the {key} is empty: name one on every row.")
            name = os.path.normpath(resolve_path(name, path.parent)) if key == "photo" else name
            if name in seen:
                raise ManifestError(
                    f"Groups file '{path}', line {reader.line_num}: the {key} {cells.get(key)!r} is already on line "
                    f"{seen[name]}: give each {key} one row."
                )
            seen[name] = reader.line_num
            labels[name] = tuple(cells.get(attribute) or None for attribute in attributes)
    except csv.Error as exc:
        raise ManifestError(f"Groups file '{path}' is not valid CSV ({exc}).") from None
    if not labels:
        raise ManifestError(f"Groups file '{path}' has no rows: give one row per {key}.")
    return Groups(key=key, attributes=attributes, labels=labels, source=os.fspath(groups_csv))


def score_pairs(
    pairs_csv: str | os.PathLike[str],
    *,
    encoder: Encoder | None = None,
    progress: Progress | None = None,
    settings: Settings | None = None,
) -> Scores:
    """Read PAIRS.csv, encode each distinct photo once, and measure every usable pair.

    A photo that cannot be read or does not hold exactly one face is a failure to enrol: it
    is reported once and its pairs are left out.

    Args:
        encoder: the encoder to use; by default the process-wide one for `settings`.
        progress: called with (photos done, photos in all) after each photo.
        settings: the encoder choice and model cache when no encoder is given (`Settings.from_env()`).

    Raises:
        ManifestError: the file cannot be read or lacks a column.
        EngineError: the face engine failed.
    """
    return compare_pairs(pairs_csv, encoder=encoder, progress=progress, settings=settings).scores()


def compare_pairs(
    pairs_csv: str | os.PathLike[str],
    *,
    encoder: Encoder | None = None,
    progress: Progress | None = None,
    settings: Settings | None = None,
) -> Comparisons:
    """`score_pairs`, keeping which photos each distance came from (for `evaluate_groups`).

    Raises:
        ManifestError: the file cannot be read or lacks a column.
        EngineError: the face engine failed.
    """
    pairs, failures = read_pairs(pairs_csv)
    photos = sorted({p.file_x for p in pairs} | {p.file_y for p in pairs})
    encodings, photo_failures = _encode(photos, encoder or vision.default_encoder(settings), progress)
    index = {photo: k for k, photo in enumerate(photos)}
    usable = [p for p in pairs if p.file_x in encodings and p.file_y in encodings]
    first = np.array([index[p.file_x] for p in usable], dtype=np.intp)
    second = np.array([index[p.file_y] for p in usable], dtype=np.intp)
    matrix = _matrix(photos, encodings)
    return Comparisons(
        photos=tuple(photos),
        subjects=tuple(Path(photo).parent.name for photo in photos),
        encodings=matrix,
        first=first,
        second=second,
        same=np.array([p.same for p in usable], dtype=np.bool_),
        distance=np.linalg.norm(matrix[first] - matrix[second], axis=1) if usable else np.zeros(0),
        failures=tuple(failures + photo_failures),
        skipped=len(pairs) - len(usable),
        source=os.fspath(pairs_csv),
    )


def _matrix(photos: Sequence[str], encodings: dict[str, NDArray[np.float64]]) -> NDArray[np.float64]:
    """The encodings as rows in `photos` order; a row of NaN for a photo that failed to enrol."""
    matrix = np.full((len(photos), DIMENSIONS), np.nan)
    for k, photo in enumerate(photos):
        if photo in encodings:
            matrix[k] = encodings[photo]
    return matrix


def _encode(
    photos: Sequence[str], encoder: Encoder, progress: Progress | None
) -> tuple[dict[str, NDArray[np.float64]], list[Failure]]:
    """Each photo's one face, encoded on a thread pool (pool.py), results taken in input order."""
    encodings: dict[str, NDArray[np.float64]] = {}
    failures: list[Failure] = []

    def one(photo: str) -> DetectedFace:
        decoded = load_photo(photo)
        return single_face(encoder.encode(decoded, PROBE_MIN_FACE_PX), decoded.name)

    with pooled(photos, lambda pool, p: pool.submit(one, p), encoder) as results:
        for done, (photo, future) in enumerate(results, start=1):
            try:
                face = future.result()
            except (ImageError, FaceError) as exc:
                failures.append(Failure(photo, str(exc)))
            else:
                encodings[photo] = face.encoding.astype(np.float64)
            if progress:
                progress(done, len(photos))
    return encodings, failures


def evaluate_identities(
    folder: str | os.PathLike[str],
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    encoder: Encoder | None = None,
    progress: Progress | None = None,
    settings: Settings | None = None,
) -> Identification:
    """Open-set 1:N on a folder per person, in memory (no gallery file).

    In name order, every third person is never enrolled (all their photos are non-mated
    probes); of the others, the first half of their usable photos (rounded up, by file name)
    are enrolled and the rest are mated probes. `encoder`, `progress` and `settings` are as
    for `score_pairs`.

    Raises:
        ManifestError: the folder cannot be read or holds no person's folder.
        InvalidArgumentError: a tolerance outside (0, 2].
        EngineError: the face engine failed.
    """
    tolerance = check_tolerance(tolerance)
    return identify(compare_identities(folder, encoder=encoder, progress=progress, settings=settings), tolerance)


def compare_identities(
    folder: str | os.PathLike[str],
    *,
    encoder: Encoder | None = None,
    progress: Progress | None = None,
    settings: Settings | None = None,
) -> Comparisons:
    """Encode a folder per person once, and compare every two usable photos in it.

    Same folder, same person. The result feeds `identify` (open-set 1:N) and
    `evaluate_groups` (per-group 1:1, all pairs). Memory grows with the square of the photos:
    ~25 bytes a pair, 12 MB for 1,000 photos.

    Raises:
        ManifestError: the folder cannot be read or holds no person's folder.
        EngineError: the face engine failed.
    """
    root = Path(folder)
    try:
        people = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except FileNotFoundError:
        raise ManifestError(f"Identities folder '{root}' does not exist: check the path.") from None
    except NotADirectoryError:
        raise ManifestError(f"'{root}' is not a folder: name a folder holding one folder per person.") from None
    except OSError as exc:
        raise ManifestError(f"Identities folder '{root}' cannot be read ({exc.strerror or exc}).") from None
    files = {person.name: _photos_in(person) for person in people}
    if not any(files.values()):
        raise ManifestError(f"Identities folder '{root}' holds no photos in per-person folders: use DIR/NAME/PHOTO.jpg.")
    everything = [photo for photos in files.values() for photo in photos]
    subjects = [name for name, photos in files.items() for _ in photos]
    encodings, failures = _encode(everything, encoder or vision.default_encoder(settings), progress)
    usable = np.array([photo in encodings for photo in everything], dtype=np.bool_)
    first, second = np.triu_indices(len(everything), k=1)
    keep = usable[first] & usable[second]
    first, second = first[keep].astype(np.intp), second[keep].astype(np.intp)
    matrix = _matrix(everything, encodings)
    owner = np.array(subjects, dtype=object)
    return Comparisons(
        photos=tuple(everything),
        subjects=tuple(subjects),
        encodings=matrix,
        first=first,
        second=second,
        same=owner[first] == owner[second] if first.size else np.zeros(0, dtype=np.bool_),
        distance=np.linalg.norm(matrix[first] - matrix[second], axis=1) if first.size else np.zeros(0),
        failures=tuple(failures),
        source=os.fspath(folder),
        people=tuple(files),
    )


def identify(comparisons: Comparisons, tolerance: float = DEFAULT_TOLERANCE) -> Identification:
    """Open-set 1:N on `compare_identities`' photos: the split `evaluate_identities` describes.

    Raises:
        InvalidArgumentError: a tolerance outside (0, 2].
    """
    tolerance = check_tolerance(tolerance)
    enrolled_mask = comparisons.enrolled
    templates: list[NDArray[np.float64]] = []
    template_people: list[str] = []
    probes: list[NDArray[np.float64]] = []
    probe_people: list[str] = []
    for number, name in enumerate(comparisons.people):
        usable = [comparisons.encodings[k] for k, s in enumerate(comparisons.subjects) if s == name and enrolled_mask[k]]
        enrolled = 0 if number % UNENROLLED_EVERY == UNENROLLED_EVERY - 1 else (len(usable) + 1) // 2
        templates += usable[:enrolled]
        template_people += [name] * enrolled
        probes += usable[enrolled:]
        probe_people += [name] * (len(usable) - enrolled)
    result = open_set(templates, template_people, probes, probe_people, tolerance)
    return replace(result, people=len(comparisons.people), failures=comparisons.failures, source=comparisons.source)


def _photos_in(person: Path) -> list[str]:
    return sorted(
        str(p) for p in person.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".")
    )
