"""Photos: our CLI against face_recognition's own CLI, whole processes, model loading included.

The same job both ways: the known people (one folder of photos per person) and the unknown
photos to name. face_recognition's CLI does it in one process that encodes every known photo
again on each run (`face_recognition --cpus 2 KNOWN UNKNOWN`, its known folder holding one
file per photo named after the person). Ours enrolls once (`consentmatch import`) and then
matches (`consentmatch match`), so two figures: the first run's import + match, and match
alone, which is what every later run costs. Runs alternate between the two tools; the ratios
are of medians. Both tools' decisions (who is in each photo, tolerance 0.6) are checked
against expected.csv.

As on a user's machine, both tools read compiled bytecode: the child processes run without
PYTHONDONTWRITEBYTECODE (which some sandboxes set, making every start compile all the source
again), and one untimed warm-up run of each tool first writes the .pyc files and the
consentmatch cache (the converted ResNet, dlib's detector file).

Where the time goes, so the ratio can be read against what is possible: `photo_cpu_s` is the
CPU our photo work takes on the unknown photos, one thread, in this process, models loaded, split
into `decode_cpu_s`, `detect_cpu_s`, `landmarks_cpu_s` and `encode_cpu_s` (the calls an encoder
makes); `fixed_s` is a whole `consentmatch match` of two blank photos (start-up, gallery, index,
models: all but the photo work), `startup_s` a whole `consentmatch --version` (interpreter and
CLI imports). A perfect split of the photo work over `--cpus` cores would take `fixed_s +
photo_cpu_s / cpus`: `ratio_match_ceiling` is the peer's time over that.

`--detector hog|yunet` runs our import and match with that detector (`--detector` on both
commands); without it, the default (yunet where it runs). `--large` first upscales the unknown photos (Lanczos; JPEGs at quality 92) so their long
sides spread evenly over 3,000-4,600 px, as a camera's photos are, and runs both tools on those.

    uv run python benchmarks/photos.py [--known examples/people] [--unknown examples/probes] [--runs 5] [--json]
    uv run python benchmarks/photos.py --detector yunet --large --runs 3 --json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from consentmatch.vision import default_encoder, load_models
from consentmatch.images import load_photo
from consentmatch.policy import PROBE_MIN_FACE_PX
from consentmatch.settings import Settings
from _report import report  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parent.parent
PURPOSE = "visitor-check-in"
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}  # what face_recognition's CLI reads
#: The long sides `--large` spreads the unknown photos over: a phone's or a camera's photos.
LARGE_PX = (3000, 4600)


def _tool(name: str) -> str:
    """A console script of this environment (the venv that runs this file), else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"'{name}' not found: run this with `uv run python benchmarks/photos.py`.")
    return found


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):  # 1: some input was rejected or unreadable, still a result
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return elapsed, done.stdout


def _peer_decisions(output: str) -> dict[str, list[str]]:
    """face_recognition's lines `path,name` (one per known photo within the tolerance) -> names per photo."""
    found: dict[str, set[str]] = {}
    for line in output.splitlines():
        path, _, name = line.rpartition(",")
        names = found.setdefault(Path(path).name, set())
        if name not in ("unknown_person", "no_persons_found"):
            names.add(name.split("--")[0])
    return {photo: sorted(names) for photo, names in found.items()}


def _our_decisions(output: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in output.splitlines():
        result = json.loads(line)
        found[Path(result["image"]).name] = sorted({f["subject"] for f in result["faces"] if f["subject"]})
    return found


def _expected(path: Path) -> dict[str, list[str]]:
    with path.open(newline="") as handle:
        return {Path(row["file"]).name: sorted(set(row["subjects"].split())) for row in csv.DictReader(handle)}


def _photo_cpu(probes: list[Path], min_face_px: int, detector: str | None, rounds: int = 3) -> dict[str, float]:
    """The CPU seconds our match's photo work takes on `probes`, one at a time, by step: median over rounds.

    The steps are those `DlibEncoder.encode` takes (its detector, dlib's landmark predictor, the
    descriptor), called one by one so each can be timed.
    """
    import dlib

    chosen = {"CONSENTMATCH_DETECTOR": detector} if detector is not None else {}
    encoder: Any = default_encoder(Settings.from_env({**os.environ, **chosen}))
    load_models(encoder)
    steps: dict[str, list[float]] = {"decode": [], "detect": [], "landmarks": [], "encode": []}
    for _ in range(rounds):
        spent = dict.fromkeys(steps, 0.0)
        for probe in probes:
            start = time.process_time()
            photo = load_photo(probe)
            decoded = time.process_time()
            boxes = encoder.detector.detect(photo, min_face_px)
            detected = time.process_time()
            predictor, shapes = encoder._landmarks(), dlib.full_object_detections()
            for box in boxes:
                shapes.append(predictor(photo.pixels, dlib.rectangle(box.left, box.top, box.right, box.bottom)))
            located = time.process_time()
            if len(shapes):
                encoder._describe(photo, shapes)
            spent["decode"] += decoded - start
            spent["detect"] += detected - decoded
            spent["landmarks"] += located - detected
            spent["encode"] += time.process_time() - located
        for step, seconds in spent.items():
            steps[step].append(seconds)
    return {step: statistics.median(seconds) for step, seconds in steps.items()}


def _upscaled(unknown: list[Path], folder: Path) -> list[Path]:
    """Copies of `unknown` upscaled so their long sides spread evenly over LARGE_PX (Lanczos; JPEGs at quality 92)."""
    folder.mkdir()
    made = []
    for number, path in enumerate(unknown):
        low, high = LARGE_PX
        target = low + (high - low) * number / max(1, len(unknown) - 1)
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        factor = target / max(rgb.size)
        large = rgb.resize((round(rgb.width * factor), round(rgb.height * factor)), Image.Resampling.LANCZOS)
        made.append(folder / path.name)  # the same name: expected.csv still applies
        large.save(made[-1], quality=92)  # JPEG for .jpg, PNG (lossless) for .png
    return made


def run(known: Path, unknown: Path, expected: Path | None, runs: int, cpus: int, min_face_px: int | None = None,
        detector: str | None = None, large: bool = False) -> dict[str, Any]:
    people = {p.name: sorted(f for f in p.iterdir() if f.suffix.lower() in PHOTO_SUFFIXES) for p in sorted(known.iterdir()) if p.is_dir()}
    probes = sorted(f for f in unknown.iterdir() if f.suffix.lower() in PHOTO_SUFFIXES)
    peer, ours = _tool("face_recognition"), _tool("consentmatch")
    reach = ["--min-face-px", str(min_face_px)] if min_face_px is not None else []
    chosen = ["--detector", detector] if detector is not None else []
    reach_px = min_face_px or PROBE_MIN_FACE_PX
    peer_s: list[float] = []
    import_s: list[float] = []
    match_s: list[float] = []
    fixed_s: list[float] = []
    startup_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="consentmatch-photos-") as folder:
        work = Path(folder)
        if large:
            probes = _upscaled(probes, work / "large")
            unknown = work / "large"
        flat_known = work / "known"  # face_recognition's layout: the file name is the person
        flat_known.mkdir()
        manifest = work / "manifest.csv"
        with manifest.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["subject", "photo", "consent_ref", "purposes", "expires", "jurisdiction"])
            for name, photos in people.items():
                for number, photo in enumerate(photos, start=1):
                    shutil.copyfile(photo, flat_known / f"{name}--{number}{photo.suffix.lower()}")
                    writer.writerow([name, str(photo.resolve()), f"BENCH-{name}", PURPOSE, "", ""])
        env = {**os.environ, "CONSENTMATCH_KEY_DIR": str(work / "keys"), "PYTHONWARNINGS": "ignore"}
        for setting in ("CONSENTMATCH_GALLERY", "PYTHONDONTWRITEBYTECODE"):
            env.pop(setting, None)
        blank = work / "blank.png"  # no face: a match of two (models loaded, as for several photos) without photo work
        Image.new("RGB", (64, 64), "gray").save(blank)
        warm = work / "warm-up.db"  # untimed: writes the .pyc files and the model cache, as a first use would
        _timed([peer, "--cpus", str(cpus), str(flat_known), str(unknown)], env)
        _timed([ours, "import", str(manifest), "-g", str(warm), "--json", *chosen], env)
        _timed([ours, "match", *map(str, probes), "-g", str(warm), "--purpose", PURPOSE, "--json", *chosen], env)
        peer_out = ours_out = ""
        for number in range(runs):
            gallery = work / f"gallery-{number}.db"
            elapsed, peer_out = _timed([peer, "--cpus", str(cpus), str(flat_known), str(unknown)], env)
            peer_s.append(elapsed)
            elapsed, _ = _timed([ours, "import", str(manifest), "-g", str(gallery), "--json", *chosen], env)
            import_s.append(elapsed)
            elapsed, ours_out = _timed([ours, "match", *map(str, probes), "-g", str(gallery), "--purpose", PURPOSE, "--json",
                                        *reach, *chosen], env)
            match_s.append(elapsed)
            elapsed, _ = _timed([ours, "match", str(blank), str(blank), "-g", str(gallery), "--purpose", PURPOSE, "--json",
                                 *chosen], env)
            fixed_s.append(elapsed)
            startup_s.append(_timed([ours, "--version"], env)[0])
        photo_cpu = _photo_cpu(probes, reach_px, detector)  # before the large copies go

    peer_found, ours_found = _peer_decisions(peer_out), _our_decisions(ours_out)
    wanted = _expected(expected) if expected is not None else {}
    names = [p.name for p in probes]
    peer_total, import_total, match_total, fixed, startup = (
        statistics.median(s) for s in (peer_s, import_s, match_s, fixed_s, startup_s))
    photo_total = sum(photo_cpu.values())
    return {
        "known_photos": sum(map(len, people.values())),
        "unknown_photos": len(probes),
        "unknown_long_side_px": [LARGE_PX[0], LARGE_PX[1]] if large else "as given",
        "runs": runs,
        "min_face_px": reach_px,
        "detector": detector or f"default ({default_encoder().detector.name})",  # type: ignore[attr-defined]
        "face_recognition_s": round(peer_total, 2),
        "consentmatch_import_s": round(import_total, 2),
        "consentmatch_match_s": round(match_total, 2),
        "ratio_import_and_match": round(peer_total / (import_total + match_total), 2),
        "ratio_match": round(peer_total / match_total, 2),
        "startup_s": round(startup, 2),
        "fixed_s": round(fixed, 2),
        "photo_cpu_s": round(photo_total, 2),
        **{f"{step}_cpu_s": round(seconds, 3) for step, seconds in photo_cpu.items()},
        "ratio_match_ceiling": round(peer_total / (fixed + photo_total / cpus), 2),
        "same_decisions": all(peer_found.get(n) == ours_found.get(n) for n in names),
        "differences": {n: {"face_recognition": peer_found.get(n), "consentmatch": ours_found.get(n)}
                        for n in names if peer_found.get(n) != ours_found.get(n)},
        "face_recognition_as_expected": sum(peer_found.get(n) == wanted[n] for n in names if n in wanted),
        "consentmatch_as_expected": sum(ours_found.get(n) == wanted[n] for n in names if n in wanted),
        "expected_rows": sum(n in wanted for n in names),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--known", type=Path, default=ROOT / "examples" / "people", help="one folder of photos per person")
    parser.add_argument("--unknown", type=Path, default=ROOT / "examples" / "probes", help="photos to name")
    parser.add_argument("--expected", type=Path, default=ROOT / "examples" / "expected.csv", help="file,faces,subjects")
    parser.add_argument("--runs", type=int, default=5, help="runs of each tool, alternating (default 5)")
    parser.add_argument("--cpus", type=int, default=2, help="face_recognition's --cpus (default 2)")
    parser.add_argument("--min-face-px", type=int, help="our match's --min-face-px (default: 40, the peer's reach)")
    parser.add_argument("--detector", choices=("hog", "yunet"), help="our import's and match's --detector (default: theirs)")
    parser.add_argument("--large", action="store_true", help="upscale the unknown photos to 3,000-4,600 px first")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    expected = args.expected if args.expected.exists() else None
    result = run(args.known, args.unknown, expected, args.runs, args.cpus, args.min_face_px, args.detector, args.large)
    report(result, args.json)


if __name__ == "__main__":
    main()
