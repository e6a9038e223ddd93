"""The pure side of evaluation: result types, and accuracy computed from distances alone.

ISO/IEC 19795-1's words: FMR and FNMR for 1:1 (`rates`, `equal_error_rate`, `evaluate`,
`calibrate`), FPIR and FNIR for open-set 1:N (`open_set`). A pair matches when its distance is at
most the tolerance, as in the gallery. Nothing here reads a file or a photo: `evaluate.py` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import InvalidArgumentError, ManifestError
from .policy import DEFAULT_TOLERANCE, check_tolerance

__all__ = [
    "FMR_TARGETS",
    "Calibration",
    "Comparisons",
    "Evaluation",
    "Failure",
    "Identification",
    "Scores",
    "calibrate",
    "check_target_fmr",
    "equal_error_rate",
    "evaluate",
    "open_set",
    "rates",
    "tolerance_for_fmr",
]

#: The false-match rates at which FNMR is reported, where the data hold enough impostor pairs.
FMR_TARGETS = (1e-2, 1e-3, 1e-4)
#: Calibrated tolerances are multiples of this (a tolerance like 0.512, not 0.51234617).
TOLERANCE_STEP = 0.001
#: A target FMR is supported by at least this many impostor pairs per expected false match:
#: with none seen in n pairs, the 95% upper bound on the FMR is still ~3/n ("rule of three").
RULE_OF_THREE = 3


@dataclass(frozen=True)
class Failure:
    """A row or photo that could not be used: a failure to enrol, reported, not fatal."""

    photo: str
    reason: str
    row: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "photo": self.photo, "reason": self.reason}


@dataclass(frozen=True, eq=False)
class Scores:
    """Distances of the compared pairs, same-person (genuine) and different-person (impostor)."""

    genuine: NDArray[np.float64]
    impostor: NDArray[np.float64]
    failures: tuple[Failure, ...] = ()
    photos: int = 0
    source: str = ""
    #: Pairs left out because a photo in them failed to enrol (bad rows are in `failures`).
    skipped: int = 0

    def __post_init__(self) -> None:
        for name in ("genuine", "impostor"):
            values = np.sort(np.asarray(getattr(self, name), dtype=np.float64).ravel())
            values.setflags(write=False)
            object.__setattr__(self, name, values)


@dataclass(frozen=True, eq=False)
class Comparisons:
    """Every photo and every compared pair of them: what figures per group need.

    `Scores` keeps only the two sorted lists of distances; this keeps which photos each
    distance came from, so a pair can be placed in its groups. Arrays are read-only.
    """

    #: Every photo named, in order; failures to enrol included (their `enrolled` is False).
    photos: tuple[str, ...]
    #: Per photo, its person: the name of the folder holding it (DIR/NAME/photo.jpg).
    subjects: tuple[str, ...]
    #: Per photo, its encoding (a row of NaN for a failure to enrol).
    encodings: NDArray[np.float64]
    #: The usable pairs: indices into `photos`, same person or not, and their distance.
    first: NDArray[np.intp]
    second: NDArray[np.intp]
    same: NDArray[np.bool_]
    distance: NDArray[np.float64]
    failures: tuple[Failure, ...] = ()
    skipped: int = 0
    source: str = ""
    #: With `compare_identities`: every person's folder, in name order (some may hold no photo).
    people: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, kind in (("encodings", np.float64), ("first", np.intp), ("second", np.intp), ("same", np.bool_), ("distance", np.float64)):
            values = np.array(getattr(self, name), dtype=kind)
            values.setflags(write=False)
            object.__setattr__(self, name, values)

    @property
    def enrolled(self) -> NDArray[np.bool_]:
        """Per photo: it gave one usable face."""
        if not len(self.photos):
            return np.zeros(0, dtype=np.bool_)
        enrolled: NDArray[np.bool_] = np.logical_not(np.isnan(self.encodings.reshape(len(self.photos), -1)).any(axis=1))
        return enrolled

    def scores(self) -> Scores:
        """The distances alone, split into genuine and impostor (what `evaluate` takes)."""
        return Scores(
            genuine=self.distance[self.same],
            impostor=self.distance[~self.same],
            failures=self.failures,
            photos=int(np.count_nonzero(self.enrolled)),
            source=self.source,
            skipped=self.skipped,
        )


@dataclass(frozen=True)
class Evaluation:
    """1:1 accuracy at a tolerance, and where the data allow, at fixed false-match rates.

    Rates are None where there is nothing to count (no genuine or no impostor pairs), and
    FNMR at an FMR target is None where the impostor pairs are too few to measure it;
    `notes` says which and why.
    """

    pairs: int
    genuine_pairs: int
    impostor_pairs: int
    tolerance: float
    accuracy: float | None
    fmr: float | None
    fnmr: float | None
    eer: float | None
    eer_tolerance: float | None
    fnmr_at_fmr: tuple[tuple[float, float | None], ...]
    photos: int
    failures: tuple[Failure, ...]
    skipped: int
    notes: tuple[str, ...]
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs_file": self.source,
            "pairs": self.pairs,
            "genuine_pairs": self.genuine_pairs,
            "impostor_pairs": self.impostor_pairs,
            "tolerance": self.tolerance,
            "accuracy": _round(self.accuracy),
            "fmr": _round(self.fmr),
            "fnmr": _round(self.fnmr),
            "eer": _round(self.eer),
            "eer_tolerance": _round(self.eer_tolerance),
            "fnmr_at_fmr": {f"{target:g}": _round(value) for target, value in self.fnmr_at_fmr},
            "photos": self.photos,
            "failures_to_enrol": len(self.failures),
            "pairs_skipped": self.skipped,
            "failures": [f.to_dict() for f in self.failures],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Calibration:
    """The tolerance that meets a target FMR on the customer's pairs, and what it costs in FNMR.

    `tolerance` is the largest multiple of 0.001 whose FMR on the data is at most the target;
    `warning` is set when the impostor pairs are too few to support the target.
    """

    target_fmr: float
    tolerance: float
    fmr: float
    fnmr: float | None
    genuine_pairs: int
    impostor_pairs: int
    warning: str | None
    failures: tuple[Failure, ...] = ()
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "tolerance": self.tolerance,
            "target_fmr": self.target_fmr,
            "fmr": _round(self.fmr),
            "fnmr": _round(self.fnmr),
            "genuine_pairs": self.genuine_pairs,
            "impostor_pairs": self.impostor_pairs,
            "warning": self.warning,
            "pairs_file": self.source,
            "failures_to_enrol": len(self.failures),
            "failures": [f.to_dict() for f in self.failures],
        }


@dataclass(frozen=True)
class Identification:
    """Open-set 1:N at a tolerance (NIST FRVT's terms, at rank 1).

    `rank1`: share of mated probes (their person is enrolled) whose nearest subject is theirs,
    whatever the distance. `fnir`: share of mated probes not identified, i.e. their own subject
    is not the nearest or lies beyond the tolerance. `fpir`: share of non-mated probes (person
    never enrolled) that get any subject within the tolerance.
    """

    people: int
    enrolled_people: int
    templates: int
    mated_probes: int
    nonmated_probes: int
    tolerance: float
    rank1: float | None
    fnir: float | None
    fpir: float | None
    failures: tuple[Failure, ...] = ()
    notes: tuple[str, ...] = ()
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "identities": self.source,
            "people": self.people,
            "enrolled_people": self.enrolled_people,
            "templates": self.templates,
            "mated_probes": self.mated_probes,
            "nonmated_probes": self.nonmated_probes,
            "tolerance": self.tolerance,
            "rank1": _round(self.rank1),
            "fnir": _round(self.fnir),
            "fpir": _round(self.fpir),
            "failures_to_enrol": len(self.failures),
            "failures": [f.to_dict() for f in self.failures],
            "notes": list(self.notes),
        }


# -- 1:1 ---------------------------------------------------------------------------------------


def rates(genuine: ArrayLike, impostor: ArrayLike, tolerance: float) -> tuple[float | None, float | None]:
    """(FMR, FNMR) at a tolerance: impostor distances within it, genuine ones beyond it."""
    g, i = np.asarray(genuine, dtype=np.float64), np.asarray(impostor, dtype=np.float64)
    fmr = float(np.count_nonzero(i <= tolerance)) / i.size if i.size else None
    fnmr = float(np.count_nonzero(g > tolerance)) / g.size if g.size else None
    return fmr, fnmr


def equal_error_rate(genuine: ArrayLike, impostor: ArrayLike) -> tuple[float, float] | None:
    """(EER, its tolerance): where FMR and FNMR are closest, their mean; None without both kinds.

    Rates only change at observed distances, so the tolerance is the middle of the interval
    over which that best point holds (for separable data: halfway between the farthest
    genuine and the nearest impostor pair).
    """
    g = np.sort(np.asarray(genuine, dtype=np.float64))
    i = np.sort(np.asarray(impostor, dtype=np.float64))
    if not g.size or not i.size:
        return None
    thresholds = np.unique(np.concatenate([g, i]))
    fmr = np.searchsorted(i, thresholds, side="right") / i.size
    fnmr = 1.0 - np.searchsorted(g, thresholds, side="right") / g.size
    best = int(np.argmin(np.abs(fmr - fnmr)))
    upper = thresholds[best + 1] if best + 1 < thresholds.size else thresholds[best]
    return float((fmr[best] + fnmr[best]) / 2), float((thresholds[best] + upper) / 2)


def tolerance_for_fmr(impostor: ArrayLike, target_fmr: float) -> float:
    """The largest multiple of TOLERANCE_STEP whose FMR on these impostor distances is <= target.

    Raises:
        InvalidArgumentError: no impostor distances, or a target outside (0, 1).
    """
    i = np.sort(np.asarray(impostor, dtype=np.float64))
    check_target_fmr(target_fmr)
    if not i.size:
        raise InvalidArgumentError("No different-person pairs: a false-match rate cannot be measured without them.")
    allowed = math.floor(target_fmr * i.size + 1e-9)  # impostor pairs that may fall within
    first_refused = float(i[allowed])
    steps = math.ceil(first_refused / TOLERANCE_STEP) - 1  # strictly below the first refused one
    tolerance = max(0.0, round(steps * TOLERANCE_STEP, 6))
    while tolerance > 0 and np.count_nonzero(i <= tolerance) > allowed:  # float rounding at the edge
        tolerance = max(0.0, round(tolerance - TOLERANCE_STEP, 6))
    return tolerance


def check_target_fmr(target_fmr: float) -> float:
    """Raises InvalidArgumentError unless 0 < target_fmr < 1."""
    if not (isinstance(target_fmr, (int, float)) and 0 < target_fmr < 1):
        raise InvalidArgumentError(f"Target FMR {target_fmr!r} is out of range: use a rate in (0, 1), e.g. 0.001.")
    return float(target_fmr)


def evaluate(scores: Scores, tolerance: float = DEFAULT_TOLERANCE) -> Evaluation:
    """Accuracy, FMR and FNMR at the tolerance, the EER, and FNMR at FMR 1e-2, 1e-3, 1e-4.

    FNMR at an FMR target needs at least 1/target impostor pairs (else it is None and a note
    says so): with fewer, not even one false match could be observed at that rate.

    Raises:
        InvalidArgumentError: a tolerance outside (0, 2].
    """
    tolerance = check_tolerance(tolerance)
    g, i = scores.genuine, scores.impostor
    fmr, fnmr = rates(g, i, tolerance)
    pairs = g.size + i.size
    correct = np.count_nonzero(g <= tolerance) + np.count_nonzero(i > tolerance)
    eer = equal_error_rate(g, i)
    notes: list[str] = []
    at_fmr: list[tuple[float, float | None]] = []
    for target in FMR_TARGETS:
        needed = math.ceil(1 / target - 1e-9)
        if i.size < needed or not g.size:
            at_fmr.append((target, None))
            notes.append(
                f"FNMR at FMR {target:g} is null: it needs at least {needed:,} different-person pairs "
                f"(one false match in {needed:,}), and these data have {i.size:,}."
            )
        else:
            at_fmr.append((target, rates(g, i, tolerance_for_fmr(i, target))[1]))
    if not g.size:
        notes.append("No same-person pairs: FNMR and the EER cannot be measured.")
    if not i.size:
        notes.append("No different-person pairs: FMR and the EER cannot be measured.")
    if scores.failures:
        notes.append(
            f"{len(scores.failures)} failure(s) to enrol: {scores.skipped} pair(s) with an unusable photo are left out."
        )
    return Evaluation(
        pairs=pairs,
        genuine_pairs=g.size,
        impostor_pairs=i.size,
        tolerance=tolerance,
        accuracy=correct / pairs if pairs else None,
        fmr=fmr,
        fnmr=fnmr,
        eer=eer[0] if eer else None,
        eer_tolerance=eer[1] if eer else None,
        fnmr_at_fmr=tuple(at_fmr),
        photos=scores.photos,
        failures=scores.failures,
        skipped=scores.skipped,
        notes=tuple(notes),
        source=scores.source,
    )


def calibrate(scores: Scores, target_fmr: float) -> Calibration:
    """The tolerance to use for a target false-match rate, chosen on the customer's own pairs.

    Returns:
        The largest tolerance (a multiple of 0.001) whose FMR on the data is at most the
        target, the FMR and FNMR it achieves there, and a `warning` when fewer than 3/target
        impostor pairs support it (the FMR's 95% upper bound would exceed the target).

    Raises:
        InvalidArgumentError: a target outside (0, 1).
        ManifestError: the pairs hold no different-person pair.
    """
    check_target_fmr(target_fmr)
    g, i = scores.genuine, scores.impostor
    if not i.size:
        raise ManifestError(
            f"Pairs file '{scores.source}' holds no usable different-person pair (same=no): "
            "calibrating needs many pairs of different people."
        )
    tolerance = tolerance_for_fmr(i, target_fmr)
    fmr, fnmr = rates(g, i, tolerance)
    needed = math.ceil(RULE_OF_THREE / target_fmr - 1e-9)
    warning = None
    if i.size < needed:
        warning = (
            f"Only {i.size:,} different-person pairs: an FMR of {target_fmr:g} needs at least {needed:,} "
            f"to be supported (with none falsely matched in n pairs, the FMR may still be up to 3/n), "
            "so this tolerance is a guess; add pairs of more different people."
        )
    return Calibration(
        target_fmr=float(target_fmr),
        tolerance=tolerance,
        fmr=fmr if fmr is not None else 0.0,
        fnmr=fnmr,
        genuine_pairs=g.size,
        impostor_pairs=i.size,
        warning=warning,
        failures=scores.failures,
        source=scores.source,
    )


# -- open-set 1:N ------------------------------------------------------------------------------


def open_set(
    templates: Sequence[NDArray[np.float64]] | NDArray[np.float64],
    template_people: Sequence[str],
    probes: Sequence[NDArray[np.float64]] | NDArray[np.float64],
    probe_people: Sequence[str],
    tolerance: float = DEFAULT_TOLERANCE,
) -> Identification:
    """Rank-1, FNIR and FPIR of probes searched against templates; a person is judged by the
    nearest of their templates, as the gallery does.
    """
    tolerance = check_tolerance(tolerance)
    enrolled = sorted(set(template_people))
    mated = np.isin(np.array(probe_people, dtype=object), np.array(enrolled, dtype=object))
    notes: list[str] = []
    rank1 = fnir = fpir = None
    if enrolled and len(probe_people):
        distances = _distances(np.asarray(probes, dtype=np.float64), np.asarray(templates, dtype=np.float64))
        column = {name: k for k, name in enumerate(enrolled)}
        owner = np.array([column[name] for name in template_people])
        # nearest template per enrolled person: distances (probes x templates) -> (probes x people)
        per_person = np.full((len(probe_people), len(enrolled)), np.inf)
        for k in range(len(enrolled)):
            per_person[:, k] = distances[:, owner == k].min(axis=1)
        nearest = per_person.argmin(axis=1)
        nearest_distance = per_person.min(axis=1)
        truth = np.array([column.get(name, -1) for name in probe_people])
        hit = nearest == truth
        if mated.any():
            rank1 = float(hit[mated].mean())
            fnir = float(1.0 - (hit & (nearest_distance <= tolerance))[mated].mean())
        if (~mated).any():
            fpir = float((nearest_distance[~mated] <= tolerance).mean())
    if not mated.any():
        notes.append("No mated probes (a second photo of an enrolled person): rank-1 and FNIR cannot be measured.")
    if mated.all():
        notes.append("No non-mated probes (a person never enrolled): FPIR cannot be measured.")
    return Identification(
        people=len(set(template_people) | set(probe_people)),
        enrolled_people=len(enrolled),
        templates=len(template_people),
        mated_probes=int(mated.sum()),
        nonmated_probes=int((~mated).sum()),
        tolerance=tolerance,
        rank1=rank1,
        fnir=fnir,
        fpir=fpir,
        notes=tuple(notes),
    )


def _distances(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """Euclidean distances between rows, without the (a x b x 128) intermediate."""
    squared = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T
    distances: NDArray[np.float64] = np.sqrt(np.maximum(squared, 0.0))
    return distances


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)

