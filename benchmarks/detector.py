"""Detection alone: dlib's HOG (face_recognition's pipeline) against libfacedetection's CNN on ONNX Runtime.

Both detectors as the encoders call them (`HogDetector.detect`, `YuNetDetector.detect`: each
resizes the photo for the reach it is asked for), on one thread, on the project's photos and on
copies made on the fly at other scales (`--scales`: 0.25 shrinks the group photos' faces to
30-45 px, 3 upscales the examples to 2,000-6,600 px). Models are loaded before timing; rounds
alternate between the detectors; the median round per photo is kept. Reports ms per photo for
each, the ratio, and the faces each found; at scales up to 1 also the faces face_recognition's
own `face_locations(img, 1)` finds (HOG, upsampled once: its CLI's reach), untimed.

    uv run python benchmarks/detector.py --json
    uv run python benchmarks/detector.py --scales 1 --limit 3 --rounds 1 --json   # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import face_recognition
import numpy as np
from PIL import Image

from consentmatch.images import Photo, load_photo
from consentmatch.vision.dlib import HogDetector
from consentmatch.vision.yunet import YuNetDetector
from _report import report  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ("examples/people/*/*", "examples/probes/*", "tests/data/edge/*")
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def photos(scales: list[float], limit: int | None) -> list[tuple[float, Photo]]:
    """The project's photos at each scale, resized here (Lanczos), decoded once."""
    paths = [p for pattern in PHOTOS for p in sorted(ROOT.glob(pattern)) if p.suffix.lower() in SUFFIXES][:limit]
    made = []
    for path in paths:
        photo = load_photo(path)
        for scale in scales:
            if scale == 1:
                made.append((scale, photo))
                continue
            image = Image.fromarray(photo.pixels)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            made.append((scale, Photo(path.name, np.asarray(image.resize(size, Image.Resampling.LANCZOS)), photo.sha256)))
    return made


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="1,0.25,3", help="comma-separated resize factors of the photos")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per photo and detector (median kept)")
    parser.add_argument("--min-face-px", type=int, default=40, help="narrowest face looked for (face_recognition's reach: 40)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos (smoke tests)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    scales = [float(s) for s in args.scales.split(",")]
    with tempfile.TemporaryDirectory(prefix="consentmatch-bench-") as cache:
        hog, cnn = HogDetector(cache=Path(cache)), YuNetDetector(cache=Path(cache))
        made = photos(scales, args.limit)
        hog.detect(made[0][1], args.min_face_px), cnn.detect(made[0][1], args.min_face_px)  # load both models
        rows: list[dict[str, Any]] = []
        for scale, photo in made:
            times: dict[str, list[float]] = {"hog": [], "yunet": []}
            found: dict[str, int] = {}
            for _ in range(args.rounds):
                for name, detector in (("hog", hog), ("yunet", cnn)):
                    start = time.perf_counter()
                    faces = detector.detect(photo, args.min_face_px)
                    times[name].append(1000 * (time.perf_counter() - start))
                    found[name] = len(faces)
            if scale <= 1:  # face_recognition's own reach, untimed (upsampling 3x copies would take minutes)
                found["peer"] = len(face_recognition.face_locations(photo.pixels, 1))
            rows.append({"scale": scale, "hog_ms": statistics.median(times["hog"]),
                         "yunet_ms": statistics.median(times["yunet"]), **{f"{k}_faces": v for k, v in found.items()}})
    result: dict[str, Any] = {"photos": len(rows), "scales": scales, "threads": 1, "min_face_px": args.min_face_px}
    for scale in [None, *scales]:
        chosen = [r for r in rows if scale is None or r["scale"] == scale]
        hog_ms = statistics.mean(r["hog_ms"] for r in chosen)
        yunet_ms = statistics.mean(r["yunet_ms"] for r in chosen)
        suffix = "" if scale is None else f"_x{scale:g}"
        result |= {
            f"hog_ms_per_photo{suffix}": round(hog_ms, 1),
            f"yunet_ms_per_photo{suffix}": round(yunet_ms, 1),
            f"ratio{suffix}": round(hog_ms / yunet_ms, 2),
            f"hog_faces{suffix}": sum(r["hog_faces"] for r in chosen),
            f"yunet_faces{suffix}": sum(r["yunet_faces"] for r in chosen),
        }
        if scale is not None and scale <= 1:
            result[f"face_locations_upsample1_faces{suffix}"] = sum(r["peer_faces"] for r in chosen)
    result["photos_with_other_counts"] = sum(r["hog_faces"] != r["yunet_faces"] for r in rows)
    report(result, args.json)


if __name__ == "__main__":
    main()
