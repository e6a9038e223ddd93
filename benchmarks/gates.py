"""Quality gates per detector: failure-to-enrol at each bar, decisions, and how a cut face is read.

For every photo of the project's sets (examples/people, examples/probes, tests/data/edge) and
of a quality set made by `photo_sets.py quality` (small, cut and large faces), with each
detector: the faces found, whether it would be enrolled at each quality level (`off`, `low`,
`medium`, `high`; the enrollment floor of 80 px, as `Gallery.enroll` checks it), and who it
names against the example people enrolled with the same detector and with HOG (a gallery
enrolled before yunet became the default). Then, on the cut photos, the share of the face the
border cuts against the `cut` each detector measures and how far the cut moves the encoding
(from the same photo uncut): what `quality.CUT_ALLOWANCE` was set from.

    uv run python benchmarks/photo_sets.py quality /tmp/sets/quality
    uv run python benchmarks/gates.py --set /tmp/sets/quality [--json]
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from consentmatch.errors import ConsentMatchError
from consentmatch.images import load_photo
from consentmatch.policy import ENROLL_MIN_FACE_PX, PROBE_MIN_FACE_PX
from consentmatch.quality import assess, single_face
from consentmatch.settings import Settings
from consentmatch.vision import default_encoder
from _report import report  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parent.parent
LEVELS = ("off", "low", "medium", "high")
DETECTORS = ("hog", "yunet")


def _photos(quality_set: Path | None) -> list[tuple[str, Path, str | None, list[str] | None]]:
    """(set, path, the one person in it or None, the people it should name or None)."""
    photos: list[tuple[str, Path, str | None, list[str] | None]] = []
    for person in sorted((ROOT / "examples" / "people").iterdir()):
        photos += [("people", p, person.name, None) for p in sorted(person.iterdir())]
    with open(ROOT / "examples" / "expected.csv", newline="") as handle:
        expected = {row["file"]: sorted(row["subjects"].split()) for row in csv.DictReader(handle)}
    photos += [("probes", p, None, expected[f"probes/{p.name}"]) for p in sorted((ROOT / "examples" / "probes").iterdir())]
    photos += [("edge", p, "obama", ["obama"]) for p in sorted((ROOT / "tests" / "data" / "edge").iterdir())]
    if quality_set is not None:
        with open(quality_set / "manifest.csv", newline="") as handle:
            photos += [(f"own-{r['kind']}", quality_set / r["file"], r["person"], [r["person"]]) for r in csv.DictReader(handle)]
    return photos


def run(quality_set: Path | None) -> dict[str, Any]:
    encoders = {d: default_encoder(Settings.from_env().replace(detector=d)) for d in DETECTORS}
    references = {}
    for d, encoder in encoders.items():
        names, vectors = [], []
        for person in sorted((ROOT / "examples" / "people").iterdir()):
            for path in sorted(person.iterdir()):
                names.append(person.name)
                vectors.append(encoder.encode(load_photo(path), PROBE_MIN_FACE_PX)[0].encoding)
        references[d] = (names, np.stack(vectors))

    def named(encoding: Any, gallery: str) -> str:
        names, vectors = references[gallery]
        distances = np.linalg.norm(vectors - encoding, axis=1)
        return names[int(distances.argmin())] if distances.min() < 0.6 else ""

    rows = []
    for set_name, path, person, expected in _photos(quality_set):
        row: dict[str, Any] = {"set": set_name, "file": path.name}
        photo = load_photo(path)
        for d, encoder in encoders.items():
            faces = encoder.encode(photo, PROBE_MIN_FACE_PX)
            result: dict[str, Any] = {"faces": len(faces), "encodings": [f.encoding for f in faces]}
            if expected is not None:
                result["as_expected"] = sorted({named(f.encoding, d) for f in faces} - {""}) == expected
                result["as_expected_hog_gallery"] = sorted({named(f.encoding, "hog") for f in faces} - {""}) == expected
            if person is not None:
                try:
                    face = single_face(faces, photo.name, ENROLL_MIN_FACE_PX)
                except ConsentMatchError:
                    face = None
                for level in LEVELS:
                    result[level] = face is not None and (level == "off" or assess(
                        photo, face, level=level, for_enrollment=True, min_face_px=ENROLL_MIN_FACE_PX).ok)
                if len(faces) == 1:
                    result["cut"] = assess(photo, faces[0], level="low").measures["cut"]
            row[d] = result
        rows.append(row)

    summary: dict[str, Any] = {}
    lines = ["| set | photos | detector | enrolled at off/low/medium/high | as expected | as expected, HOG gallery |",
             "|---|---:|---|---|---|---|"]
    for set_name in dict.fromkeys(r["set"] for r in rows):
        part = [r for r in rows if r["set"] == set_name]
        for d in DETECTORS:
            enrolled = [sum(bool(r[d][lv]) for r in part) for lv in LEVELS] if LEVELS[0] in part[0][d] else None
            as_expected = [r[d]["as_expected"] for r in part if "as_expected" in r[d]]
            cross = [r[d]["as_expected_hog_gallery"] for r in part if "as_expected" in r[d]]
            summary[f"{set_name}/{d}"] = {"photos": len(part), "enrolled": enrolled,
                                          "as_expected": sum(as_expected), "as_expected_hog_gallery": sum(cross)}
            shown = "/".join(map(str, enrolled)) if enrolled else "-"
            lines.append(f"| {set_name} | {len(part)} | {d} | {shown} | {sum(as_expected)}/{len(as_expected)} | "
                         f"{sum(cross)}/{len(cross)} |")
    cut_rows = [r for r in rows if r["set"] == "own-cut"]
    if cut_rows:
        lines += ["", "| share of the face cut | detector | found | measured cut, median (min-max) | encoding moved, median (max) |",
                  "|---:|---|---:|---|---|"]
        for d in DETECTORS:
            uncut = {r["file"].rsplit("__", 1)[0]: r[d]["encodings"] for r in cut_rows if r["file"].endswith("left00.jpg")}
            by_share: dict[int, list[tuple[float, float]]] = defaultdict(list)
            counts: dict[int, int] = defaultdict(int)
            for r in cut_rows:
                share = int(r["file"][-6:-4])
                counts[share] += 1
                base = uncut.get(r["file"].rsplit("__", 1)[0])
                if r[d]["faces"] == 1 and base and len(base) == 1:
                    by_share[share].append((r[d]["cut"], float(np.linalg.norm(r[d]["encodings"][0] - base[0]))))
            for share in sorted(counts):
                cuts, moved = [c for c, _ in by_share[share]], [m for _, m in by_share[share]]
                summary[f"cut{share}/{d}"] = {"found": len(cuts), "of": counts[share],
                                              "cut_median": statistics.median(cuts) if cuts else None,
                                              "moved_median": statistics.median(moved) if moved else None}
                if cuts:
                    lines.append(f"| {share}% | {d} | {len(cuts)}/{counts[share]} | {statistics.median(cuts):.3f} "
                                 f"({min(cuts):.3f}-{max(cuts):.3f}) | {statistics.median(moved):.3f} ({max(moved):.3f}) |")
    summary["table"] = "\n".join(lines)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", type=Path, help="a quality set made by photo_sets.py quality (default: the project's photos only)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = run(args.set)
    if args.json:
        report(result, True)
    else:
        print(result["table"])


if __name__ == "__main__":
    main()
