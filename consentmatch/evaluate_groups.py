"""Error rates per demographic group (NIST IR 8280, ISO/IEC 19795-10): whom the matcher fails.

A GROUPS.csv gives each photo (or each subject) labels in any columns the customer keeps: sex,
age band, self-reported ethnicity. Each column is an *attribute* and each of its values a
*group*. At one tolerance, per group: FMR over the different-person pairs with both photos in
the group (NIST IR 8280's same-group impostors: people of one group look more alike to a
matcher than people of two), FNMR over its same-person pairs, failure to enrol over its
photos, and quantiles of both distance distributions; per pair of groups, the FMR between
them (NIST's cross-group matrix). Every rate comes with its counts and an exact
(Clopper-Pearson) 95% interval, because a rate on a small group means little; an attribute's
differential (highest over lowest rate) says whether the intervals even allow a conclusion.

Nothing here reads a file or a photo: `evaluate.py` reads GROUPS.csv and encodes.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import InvalidArgumentError, ManifestError
from .evaluate_metrics import RULE_OF_THREE, Comparisons, check_target_fmr, tolerance_for_fmr
from .policy import DEFAULT_TOLERANCE, check_tolerance

__all__ = [
    "CONFIDENCE",
    "MIN_PAIRS",
    "AttributeReport",
    "Differential",
    "Distribution",
    "GroupCalibration",
    "GroupEvaluation",
    "GroupPairRates",
    "GroupRates",
    "GroupTolerance",
    "Groups",
    "Rate",
    "calibrate_groups",
    "clopper_pearson",
    "evaluate_groups",
]

#: The confidence of every interval reported.
CONFIDENCE = 0.95
#: A group with fewer same-person or different-person pairs than this is too small to conclude
#: anything: with no error in 29 pairs, the rate may still be up to 11.9% (95%).
MIN_PAIRS = 30
#: An attribute with more distinct values than this is not a grouping (a name, an id, a date).
MAX_GROUPS = 50
#: The distance quantiles reported per group, by name.
QUANTILES = (("min", 0.0), ("q05", 0.05), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("q95", 0.95), ("max", 1.0))


# -- Clopper-Pearson ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)  # a report asks for the same few counts many times (0 in n, above all)
def clopper_pearson(errors: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a rate of `errors` in `trials`.

    The lower bound is the rate at which `errors` or more would be seen with probability
    (1 - confidence)/2 (0 when no error was seen), the upper bound the rate at which `errors`
    or fewer would (1 when all were errors). Both are found by bisection on the binomial
    tail, summed in log space: the beta quantiles scipy would give, without scipy.

    Raises:
        InvalidArgumentError: counts out of order, or a confidence outside (0, 1).
    """
    if not (0 <= errors <= trials and trials > 0) or not 0 < confidence < 1:
        raise InvalidArgumentError(
            f"Cannot bound {errors} error(s) in {trials} trial(s) at confidence {confidence}: "
            "give 0 <= errors <= trials, trials > 0, confidence in (0, 1)."
        )
    tail = (1.0 - confidence) / 2
    # The lower bound of k errors is 1 - the upper bound of k successes: the same tail, mirrored.
    return 1.0 - _upper(trials - errors, trials, tail), _upper(errors, trials, tail)


def _upper(k: int, n: int, tail: float) -> float:
    """The p at which P(X <= k) = tail for X ~ Binomial(n, p)."""
    if k == n:
        return 1.0
    if k == 0:
        return 1.0 - math.pow(tail, 1.0 / n)  # P(X <= 0) = (1 - p)^n
    j = np.arange(k + 1, dtype=np.float64)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log(n - j[1:] + 1.0) - np.log(j[1:]))])
    rest = n - j

    def beyond_tail(p: float) -> float:
        terms = log_choose + j * math.log(p) + rest * math.log1p(-p)
        top = float(terms.max())
        return math.exp(top) * float(np.exp(terms - top).sum()) - tail

    return _solve(beyond_tail)


def _solve(falling: Callable[[float], float]) -> float:
    """The p in (0, 1) where a decreasing function of p crosses zero, to ~1e-15."""
    low, high = 0.0, 1.0
    for _ in range(64):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if falling(middle) > 0:
            low = middle
        else:
            high = middle
    return (low + high) / 2


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """`errors` among `trials`, the rate and its Clopper-Pearson interval (None without trials)."""

    errors: int
    trials: int
    rate: float | None
    low: float | None
    high: float | None

    @classmethod
    def of(cls, errors: int, trials: int, confidence: float = CONFIDENCE) -> Rate:
        if not trials:
            return cls(errors, trials, None, None, None)
        low, high = clopper_pearson(errors, trials, confidence)
        return cls(errors, trials, errors / trials, low, high)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rate": _round(self.rate),
            "ci_low": _round(self.low),
            "ci_high": _round(self.high),
            "errors": self.errors,
            "trials": self.trials,
        }


@dataclass(frozen=True)
class Distribution:
    """Summary quantiles of a group's distances (`QUANTILES`); empty without pairs."""

    count: int
    quantiles: tuple[tuple[str, float], ...]

    @classmethod
    def of(cls, values: NDArray[np.float64]) -> Distribution:
        if not values.size:
            return cls(0, ())
        points = np.quantile(values, [q for _, q in QUANTILES])
        return cls(int(values.size), tuple((name, float(v)) for (name, _), v in zip(QUANTILES, points)))

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, **{name: _round(value) for name, value in self.quantiles}}


@dataclass(frozen=True)
class GroupRates:
    """One group's figures at the tolerance: pairs within it, and its photos' failures to enrol."""

    attribute: str
    group: str
    photos: int
    fte: Rate
    fmr: Rate
    fnmr: Rate
    genuine: Distribution
    impostor: Distribution

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "photos": self.photos,
            "failure_to_enrol": self.fte.to_dict(),
            "fmr": self.fmr.to_dict(),
            "fnmr": self.fnmr.to_dict(),
            "genuine_distances": self.genuine.to_dict(),
            "impostor_distances": self.impostor.to_dict(),
        }


@dataclass(frozen=True)
class GroupPairRates:
    """The pairs with one photo in `first` and the other in `second` (the same group on the diagonal).

    FNMR across two groups is only measured where one person's photos carry different labels
    (an age band that changed between photos); it is usually without trials.
    """

    attribute: str
    first: str
    second: str
    fmr: Rate
    fnmr: Rate

    def to_dict(self) -> dict[str, Any]:
        return {"groups": [self.first, self.second], "fmr": self.fmr.to_dict(), "fnmr": self.fnmr.to_dict()}


@dataclass(frozen=True)
class Differential:
    """The highest and lowest rate among an attribute's groups, and whether that gap is real.

    `ratio` is highest/lowest (None when the lowest is 0); `conclusive` is False when the two
    groups' intervals overlap: the gap may then be chance.
    """

    measure: str
    highest: str
    highest_rate: float
    lowest: str
    lowest_rate: float
    ratio: float | None
    conclusive: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "highest": {"group": self.highest, "rate": _round(self.highest_rate)},
            "lowest": {"group": self.lowest, "rate": _round(self.lowest_rate)},
            "ratio": _round(self.ratio),
            "difference": _round(self.highest_rate - self.lowest_rate),
            "conclusive": self.conclusive,
        }


@dataclass(frozen=True)
class AttributeReport:
    """One column of GROUPS.csv: its groups, the matrix of group pairs, and the differentials."""

    attribute: str
    groups: tuple[GroupRates, ...]
    group_pairs: tuple[GroupPairRates, ...]
    fmr_differential: Differential | None
    fnmr_differential: Differential | None
    unlabelled_photos: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute,
            "groups": [g.to_dict() for g in self.groups],
            "group_pairs": [p.to_dict() for p in self.group_pairs],
            "fmr_differential": self.fmr_differential.to_dict() if self.fmr_differential else None,
            "fnmr_differential": self.fnmr_differential.to_dict() if self.fnmr_differential else None,
            "unlabelled_photos": self.unlabelled_photos,
        }


@dataclass(frozen=True)
class GroupEvaluation:
    """Per-group error rates at one tolerance, for every attribute of GROUPS.csv.

    `warnings` name each group too small to conclude anything about, and each differential
    whose intervals overlap; they are part of the result, not decoration.
    """

    tolerance: float
    confidence: float
    attributes: tuple[AttributeReport, ...]
    warnings: tuple[str, ...]
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups_file": self.source,
            "tolerance": self.tolerance,
            "confidence": self.confidence,
            "min_pairs": MIN_PAIRS,
            "attributes": [a.to_dict() for a in self.attributes],
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class GroupTolerance:
    """One group's own calibrated tolerance, and its FMR and FNMR at the worst group's one."""

    attribute: str
    group: str
    genuine_pairs: int
    impostor_pairs: int
    tolerance: float
    fmr: Rate
    fnmr: Rate

    def to_dict(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute,
            "group": self.group,
            "tolerance": self.tolerance,
            "genuine_pairs": self.genuine_pairs,
            "impostor_pairs": self.impostor_pairs,
            "fmr": self.fmr.to_dict(),
            "fnmr": self.fnmr.to_dict(),
        }


@dataclass(frozen=True)
class GroupCalibration:
    """The tolerance at which the worst group meets the target FMR (same-group impostors).

    `tolerance` is the smallest of the groups' own calibrated tolerances, so at it every group
    with different-person pairs has an FMR at most the target; `attribute` and `group` name
    the group that sets it.
    """

    target_fmr: float
    tolerance: float | None
    attribute: str | None
    group: str | None
    groups: tuple[GroupTolerance, ...]
    warnings: tuple[str, ...]
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups_file": self.source,
            "target_fmr": self.target_fmr,
            "tolerance": self.tolerance,
            "worst": {"attribute": self.attribute, "group": self.group},
            "groups": [g.to_dict() for g in self.groups],
            "warnings": list(self.warnings),
        }


# -- the groups -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Groups:
    """GROUPS.csv: labels per photo or per subject, one attribute per column.

    `key` is "photo" (keys are photo paths, matched after normalising) or "subject" (keys are
    a person's folder name: DIR/NAME/photo.jpg, as in `evaluate --identities`). A missing
    label (an empty cell) leaves the photo out of that attribute's figures.
    """

    key: str
    attributes: tuple[str, ...]
    labels: Mapping[str, tuple[str | None, ...]] = field(hash=False)
    source: str = ""

    def __post_init__(self) -> None:
        if self.key not in ("photo", "subject"):
            raise InvalidArgumentError(f"Groups are keyed by {self.key!r}: use 'photo' or 'subject'.")
        if not self.attributes:
            raise InvalidArgumentError("Groups need at least one attribute (a column such as sex or age band).")
        keyed = {(_photo_key(k) if self.key == "photo" else k): v for k, v in self.labels.items()}
        for key, labels in keyed.items():
            if len(labels) != len(self.attributes):
                raise InvalidArgumentError(f"Groups of {key!r} give {len(labels)} label(s) for {len(self.attributes)} attribute(s).")
        object.__setattr__(self, "labels", keyed)
        for number, attribute in enumerate(self.attributes):
            distinct = {labels[number] for labels in keyed.values()} - {None}
            if len(distinct) > MAX_GROUPS:
                raise ManifestError(
                    f"Groups file '{self.source}': column {attribute!r} has {len(distinct)} distinct values: a group is a "
                    f"category such as sex or age band (at most {MAX_GROUPS}); band numbers such as ages first."
                )

    def of(self, comparisons: Comparisons) -> dict[str, list[str | None]]:
        """Each attribute's label per photo of `comparisons` (None where it has none).

        Raises:
            ManifestError: no photo of `comparisons` has a label.
        """
        keys = [_photo_key(p) for p in comparisons.photos] if self.key == "photo" else list(comparisons.subjects)
        rows = [self.labels.get(key) for key in keys]
        if comparisons.photos and not any(rows):
            how = (
                "photo paths absolute or relative to GROUPS.csv, naming the same files"
                if self.key == "photo"
                else "subject names equal to the folder holding each photo (DIR/NAME/photo.jpg)"
            )
            raise ManifestError(f"Groups file '{self.source}' labels none of the {len(keys)} photo(s) compared: use {how}.")
        return {
            attribute: [row[number] if row else None for row in rows] for number, attribute in enumerate(self.attributes)
        }


def _photo_key(path: str) -> str:
    return os.path.normcase(os.path.normpath(os.path.abspath(path)))


# -- per-group figures ------------------------------------------------------------------------------


def evaluate_groups(
    comparisons: Comparisons, groups: Groups, tolerance: float = DEFAULT_TOLERANCE, confidence: float = CONFIDENCE
) -> GroupEvaluation:
    """FMR (same-group impostors), FNMR, failure to enrol and distances per group, at one tolerance.

    Args:
        comparisons: the photos and pairs (`evaluate.compare_pairs` or `compare_identities`).
        groups: the labels (`evaluate.read_groups`).

    Raises:
        InvalidArgumentError: a tolerance outside (0, 2].
        ManifestError: the groups label none of the photos.
    """
    tolerance = check_tolerance(tolerance)
    labels = groups.of(comparisons)
    enrolled = comparisons.enrolled
    reports: list[AttributeReport] = []
    warnings: list[str] = []
    for attribute in groups.attributes:
        names, code = _codes(labels[attribute])
        a, b = code[comparisons.first], code[comparisons.second]
        low, high = np.minimum(a, b), np.maximum(a, b)
        labelled = low >= 0
        rows: list[GroupRates] = []
        for k, name in enumerate(names):
            members = code == k
            within = labelled & (a == k) & (b == k)
            genuine = comparisons.distance[within & comparisons.same]
            impostor = comparisons.distance[within & ~comparisons.same]
            rows.append(
                GroupRates(
                    attribute=attribute,
                    group=name,
                    photos=int(np.count_nonzero(members)),
                    fte=Rate.of(int(np.count_nonzero(members & ~enrolled)), int(np.count_nonzero(members)), confidence),
                    fmr=Rate.of(int(np.count_nonzero(impostor <= tolerance)), impostor.size, confidence),
                    fnmr=Rate.of(int(np.count_nonzero(genuine > tolerance)), genuine.size, confidence),
                    genuine=Distribution.of(genuine),
                    impostor=Distribution.of(impostor),
                )
            )
            warnings += _too_small(rows[-1])
        # The matrix in one pass over the pairs: each pair's cell is (low, high), counted by bincount.
        cell = np.where(labelled, low * len(names) + high, 0)
        size = len(names) ** 2

        def count(mask: NDArray[np.bool_]) -> NDArray[np.intp]:
            counted: NDArray[np.intp] = np.bincount(cell[mask & labelled], minlength=size)
            return counted

        impostors, false_matches = count(~comparisons.same), count(~comparisons.same & (comparisons.distance <= tolerance))
        genuines, false_non_matches = count(comparisons.same), count(comparisons.same & (comparisons.distance > tolerance))
        pairs: list[GroupPairRates] = []
        for k1 in range(len(names)):
            for k2 in range(k1, len(names)):
                at = k1 * len(names) + k2
                pairs.append(
                    GroupPairRates(
                        attribute=attribute,
                        first=names[k1],
                        second=names[k2],
                        fmr=Rate.of(int(false_matches[at]), int(impostors[at]), confidence),
                        fnmr=Rate.of(int(false_non_matches[at]), int(genuines[at]), confidence),
                    )
                )
        fmr_gap = _differential("FMR", attribute, ((g.group, g.fmr) for g in rows))
        fnmr_gap = _differential("FNMR", attribute, ((g.group, g.fnmr) for g in rows))
        for gap in (fmr_gap, fnmr_gap):
            if gap is not None and not gap.conclusive and gap.highest_rate > gap.lowest_rate:
                warnings.append(
                    f"{attribute}: the {gap.measure} intervals of {gap.highest!r} ({gap.highest_rate:.4f}) and "
                    f"{gap.lowest!r} ({gap.lowest_rate:.4f}) overlap: the difference may be chance."
                )
        unlabelled = int(np.count_nonzero(code < 0))
        if unlabelled:
            warnings.append(f"{attribute}: {unlabelled} photo(s) have no label and are left out of its figures.")
        reports.append(AttributeReport(attribute, tuple(rows), tuple(pairs), fmr_gap, fnmr_gap, unlabelled))
    return GroupEvaluation(
        tolerance=tolerance, confidence=confidence, attributes=tuple(reports), warnings=tuple(warnings), source=groups.source
    )


def calibrate_groups(comparisons: Comparisons, groups: Groups, target_fmr: float) -> GroupCalibration:
    """The tolerance at which the worst group meets `target_fmr`, each group's own, and what it costs.

    Each group's tolerance is calibrated on its same-group different-person pairs alone (as
    `calibrate` does on all of them); the smallest one is the worst group's. Groups without
    such pairs are left out, with a warning, as are too few pairs to support the target.

    Raises:
        InvalidArgumentError: a target outside (0, 1).
        ManifestError: the groups label none of the photos.
    """
    check_target_fmr(target_fmr)
    labels = groups.of(comparisons)
    found: list[tuple[str, str, NDArray[np.float64], NDArray[np.float64], float]] = []
    warnings: list[str] = []
    needed = math.ceil(RULE_OF_THREE / target_fmr - 1e-9)
    for attribute in groups.attributes:
        names, code = _codes(labels[attribute])
        a, b = code[comparisons.first], code[comparisons.second]
        for k, name in enumerate(names):
            within = (a == k) & (b == k)
            genuine = comparisons.distance[within & comparisons.same]
            impostor = comparisons.distance[within & ~comparisons.same]
            if not impostor.size:
                warnings.append(f"{attribute} = {name!r}: no different-person pairs within the group: it cannot be calibrated.")
                continue
            if impostor.size < needed:
                warnings.append(
                    f"{attribute} = {name!r}: only {impostor.size:,} different-person pairs within the group; an FMR of "
                    f"{target_fmr:g} needs at least {needed:,}, so its tolerance is a guess."
                )
            found.append((attribute, name, genuine, impostor, tolerance_for_fmr(impostor, target_fmr)))
    if not found:
        return GroupCalibration(float(target_fmr), None, None, None, (), tuple(warnings), groups.source)
    worst = min(found, key=lambda row: row[4])
    at = worst[4]
    rows = tuple(
        GroupTolerance(
            attribute=attribute,
            group=name,
            genuine_pairs=genuine.size,
            impostor_pairs=impostor.size,
            tolerance=own,
            fmr=Rate.of(int(np.count_nonzero(impostor <= at)), impostor.size),
            fnmr=Rate.of(int(np.count_nonzero(genuine > at)), genuine.size),
        )
        for attribute, name, genuine, impostor, own in found
    )
    return GroupCalibration(float(target_fmr), at, worst[0], worst[1], rows, tuple(warnings), groups.source)


def _codes(labels: list[str | None]) -> tuple[list[str], NDArray[np.intp]]:
    """The sorted distinct labels, and each photo's index among them (-1: no label)."""
    names = sorted({label for label in labels if label is not None})
    index = {name: k for k, name in enumerate(names)}
    return names, np.array([index[label] if label is not None else -1 for label in labels], dtype=np.intp)


def _too_small(row: GroupRates) -> list[str]:
    small = [(kind, rate) for kind, rate in (("same-person", row.fnmr), ("different-person", row.fmr)) if rate.trials < MIN_PAIRS]
    if not small:
        return []
    counts = " and ".join(f"{rate.trials:,} {kind}" for kind, rate in small)
    bounds = "; ".join(
        f"its {'FNMR' if kind == 'same-person' else 'FMR'} could be anywhere in {rate.low:.3f}-{rate.high:.3f}"
        for kind, rate in small
        if rate.low is not None and rate.high is not None
    )
    return [
        f"{row.attribute} = {row.group!r}: only {counts} pair(s) within the group (fewer than {MIN_PAIRS}): too few to "
        f"conclude anything about it" + (f" ({bounds}, 95%)." if bounds else ".")
    ]


def _differential(measure: str, attribute: str, rates: Iterable[tuple[str, Rate]]) -> Differential | None:
    measured = [(name, rate) for name, rate in rates if rate.rate is not None]
    if len(measured) < 2:
        return None
    high_name, high = max(measured, key=lambda item: (item[1].rate or 0.0, item[0]))
    low_name, low = min(measured, key=lambda item: (item[1].rate or 0.0, item[0]))
    assert high.rate is not None and low.rate is not None and high.low is not None and low.high is not None
    return Differential(
        measure=measure,
        highest=high_name,
        highest_rate=high.rate,
        lowest=low_name,
        lowest_rate=low.rate,
        ratio=high.rate / low.rate if low.rate > 0 else None,
        conclusive=high.low > low.high,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
