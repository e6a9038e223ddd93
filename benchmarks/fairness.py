"""Per-group error rates on the Face Research Lab London Set (issue 26): `evaluate --groups` end to end.

The London Set: 102 adults photographed in London in 2012, one neutral and one smiling
frontal photo each (1350x1350), with self-reported sex, age and ethnicity; all gave signed
consent to research use. CC BY 4.0: DeBruine, L., & Jones, B. (2017). Face Research Lab London
Set (Version 5). figshare. https://doi.org/10.6084/m9.figshare.5047666.v5 . Its photos are
never copied into this repository: bring the public repository `debruine/webmorphR.stim` and
name the folder holding `inst/neutral_front`, `inst/smiling_front` and
`data-raw/london_info.csv`, e.g.

    git clone --depth 1 https://github.com/debruine/webmorphR.stim /tmp/london
    uv run python benchmarks/fairness.py /tmp/london --out /tmp/london-report --detector hog

This writes OUT/pairs.csv (every pair of the 204 photos: 102 same-person, 20,604
different-person), OUT/groups.csv (photo -> sex, age band, ethnicity and sex x ethnicity as
their own column), then runs what `consentmatch evaluate OUT/pairs.csv --groups
OUT/groups.csv --groups-plot OUT/groups.png --json` runs, through the Python API, and
`calibrate --groups` at --target-fmr. OUT/report.json holds the whole report; the summary
printed is one line per group.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
from pathlib import Path
from typing import Any

from consentmatch import evaluate as evaluation
from consentmatch.settings import Settings
from _report import report  # benchmarks/ is on sys.path when a script runs

ATTRIBUTION = (
    "Face Research Lab London Set, CC BY 4.0: DeBruine, L., & Jones, B. (2017). Face Research Lab London Set "
    "(Version 5). figshare. https://doi.org/10.6084/m9.figshare.5047666.v5"
)
VIEWS = ("neutral_front", "smiling_front")
#: Ages 18-54 in the set; three bands of 27-42 people (2 ages are not given: no label).
AGE_BANDS = ((18, 24, "18-24"), (25, 29, "25-29"), (30, 200, "30+"))


def build(data: Path, out: Path, limit: int | None) -> tuple[Path, Path]:
    """Write OUT/pairs.csv and OUT/groups.csv from the London Set's folder (photos referenced, not copied)."""
    info = data / "data-raw" / "london_info.csv"
    with info.open(newline="", encoding="utf-8") as handle:
        people = list(csv.DictReader(handle))[:limit]
    photos: list[tuple[str, Path]] = []
    groups: list[dict[str, str]] = []
    for person in people:
        face = person["face_id"].strip()
        for view in VIEWS:
            found = sorted((data / "inst" / view).glob(f"{face}_*.jpg"))
            if not found:
                raise SystemExit(f"No {view} photo of face {face} in {data / 'inst' / view}: name the webmorphR.stim folder.")
            photos.append((face, found[0].resolve()))
            groups.append(
                {
                    "photo": str(found[0].resolve()),
                    "sex": person["face_gender"].strip(),
                    "age_band": _band(person["face_age"]),
                    "ethnicity": person["face_eth"].strip(),
                    "sex_ethnicity": f"{person['face_gender'].strip()} {person['face_eth'].strip()}",
                }
            )
    out.mkdir(parents=True, exist_ok=True)
    pairs_csv, groups_csv = out / "pairs.csv", out / "groups.csv"
    with pairs_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_x", "file_y", "same"])
        for (a, x), (b, y) in itertools.combinations(photos, 2):
            writer.writerow([x, y, "yes" if a == b else "no"])
    with groups_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["photo", "sex", "age_band", "ethnicity", "sex_ethnicity"])
        writer.writeheader()
        writer.writerows(groups)
    (out / "ATTRIBUTION.txt").write_text(ATTRIBUTION + "\n", encoding="utf-8")
    return pairs_csv, groups_csv


def _band(age: str) -> str:
    if not age.strip().isdigit():
        return ""
    return next(name for low, high, name in AGE_BANDS if low <= int(age) <= high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the webmorphR.stim folder (inst/neutral_front, inst/smiling_front, data-raw)")
    parser.add_argument("--out", type=Path, required=True, help="where pairs.csv, groups.csv, report.json, groups.png go")
    parser.add_argument("--detector", default=None, help="hog or yunet (default: the settings' default)")
    parser.add_argument("--tolerance", type=float, default=0.6)
    parser.add_argument("--target-fmr", type=float, default=1e-3)
    parser.add_argument("--limit", type=int, default=None, help="only the first N people (a smoke test)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    pairs_csv, groups_csv = build(args.data, args.out, args.limit)
    settings = Settings.from_env().replace(detector=args.detector)
    groups = evaluation.read_groups(groups_csv)
    comparisons = evaluation.compare_pairs(pairs_csv, settings=settings)
    scores = comparisons.scores()
    overall = evaluation.evaluate(scores, args.tolerance)
    by_group = evaluation.evaluate_groups(comparisons, groups, args.tolerance)
    calibration = evaluation.calibrate(scores, args.target_fmr)
    worst = evaluation.calibrate_groups(comparisons, groups, args.target_fmr)
    evaluation.plot_groups(comparisons, groups, by_group, args.out / "groups.png")
    whole = {
        "attribution": ATTRIBUTION,
        "detector": settings.detector or "default",
        "evaluate": overall.to_dict(),
        "groups": by_group.to_dict(),
        "calibrate": calibration.to_dict() | {"groups": worst.to_dict()},
    }
    (args.out / "report.json").write_text(json.dumps(whole, indent=1), encoding="utf-8")

    summary: dict[str, Any] = {
        "detector": settings.detector or "default",
        "photos": f"{scores.photos} encoded, {len(scores.failures)} failure(s) to enrol",
        "pairs": f"{overall.genuine_pairs} same-person, {overall.impostor_pairs} different-person",
        "overall": f"FMR {overall.fmr:.4f} FNMR {overall.fnmr:.4f} at {overall.tolerance:g}; EER {overall.eer:.4f} at {overall.eer_tolerance:.3f}",
        "calibrated": f"FMR {args.target_fmr:g}: overall {calibration.tolerance:.3f}, worst group "
        f"{worst.attribute}={worst.group} {worst.tolerance if worst.tolerance is None else f'{worst.tolerance:.3f}'}",
    }
    for attribute in by_group.attributes:
        for group in attribute.groups:
            summary[f"{attribute.attribute}={group.group}"] = (
                f"photos {group.photos} FTE {group.fte.errors}; FNMR {_cell(group.fnmr)}; FMR {_cell(group.fmr)}"
            )
        for gap in (attribute.fmr_differential, attribute.fnmr_differential):
            if gap is not None and gap.highest_rate == gap.lowest_rate:
                summary[f"{attribute.attribute} {gap.measure} differential"] = f"{gap.highest_rate:.4f} in every group"
            elif gap is not None:
                summary[f"{attribute.attribute} {gap.measure} differential"] = (
                    f"{gap.highest} {gap.highest_rate:.4f} / {gap.lowest} {gap.lowest_rate:.4f}"
                    f" = {'n/a (lowest is 0)' if gap.ratio is None else f'{gap.ratio:.1f}x'}, conclusive: {gap.conclusive}"
                )
    summary["warnings"] = len(by_group.warnings)
    summary["report"] = str(args.out / "report.json")
    summary["plot"] = str(args.out / "groups.png")
    report(summary, args.json)


def _cell(rate: evaluation.Rate) -> str:
    if rate.rate is None:
        return "-"
    return f"{rate.rate:.4f} [{rate.low:.4f}-{rate.high:.4f}] {rate.errors}/{rate.trials}"


if __name__ == "__main__":
    main()
