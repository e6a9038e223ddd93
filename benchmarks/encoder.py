"""Encoding speed: dlib's face ResNet against its ONNX conversion, on the same chips, batched.

Finds the faces of the project's photos once (dlib's HOG detector and 5-point landmarks), cuts
the aligned 150x150 chips dlib's ResNet reads, then times the descriptor step alone: dlib's
`compute_face_descriptor` on lists of chips, and `OnnxEncoder.encode_chips` on the same
batches. Rounds alternate between the backends so that load from other processes hits both
alike; the median round is reported. `max_abs_diff` compares the two backends' encodings.
Conversion time is measured once, into a temporary cache folder (what a first run pays).

    uv run python benchmarks/encoder.py --json
    uv run python benchmarks/encoder.py --threads 1 --batch 8 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from consentmatch.vision.dlib import DlibEncoder, face_chips, model_dir
from consentmatch.images import load_photo
from consentmatch.vision.onnx import OnnxEncoder, converted_model
from _report import report  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ("examples/people/*/*", "examples/probes/*", "tests/data/edge/*")
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def project_chips() -> NDArray[np.uint8]:
    """The aligned chips of every face in the project's photos, (n, 150, 150, 3)."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(str(model_dir() / "shape_predictor_5_face_landmarks.dat"))
    chips = []
    for pattern in PHOTOS:
        for path in sorted(ROOT.glob(pattern)):
            if path.suffix.lower() not in SUFFIXES:
                continue
            photo = load_photo(path)
            shapes = dlib.full_object_detections()
            for rect in detector(photo.pixels, 1):
                shapes.append(landmarks(photo.pixels, rect))
            if len(shapes):
                chips.append(face_chips(photo, shapes))
    return np.concatenate(chips)


def time_per_face(encode: Callable[[NDArray[np.uint8]], NDArray[np.float32]], chips: NDArray[np.uint8], batch: int) -> float:
    """Milliseconds per face to encode all chips in batches of `batch`."""
    start = time.perf_counter()
    for i in range(0, len(chips), batch):
        encode(chips[i : i + batch])
    return (time.perf_counter() - start) * 1000 / len(chips)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per backend (median reported)")
    parser.add_argument("--batch", type=int, default=16, help="faces per call (dlib's Python API batches 16)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: one per core)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    chips = project_chips()
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        converted_model(Path(cache))
        convert_s = time.perf_counter() - start
        start = time.perf_counter()
        converted_model(Path(cache))
        cached_s = time.perf_counter() - start
        fast = OnnxEncoder(cache=Path(cache), threads=args.threads)
        reference = DlibEncoder()
        expected, got = reference.encode_chips(chips), fast.encode_chips(chips)  # also warms both up
    dlib_ms, fast_ms = [], []
    for _ in range(args.rounds):
        dlib_ms.append(time_per_face(reference.encode_chips, chips, args.batch))
        fast_ms.append(time_per_face(fast.encode_chips, chips, args.batch))
    import onnxruntime

    result = {
        "faces": len(chips),
        "batch": args.batch,
        "rounds": args.rounds,
        "threads": args.threads or "default",
        "cpus": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "dlib_ms_per_face": round(statistics.median(dlib_ms), 2),
        "fast_ms_per_face": round(statistics.median(fast_ms), 2),
        "speedup": round(statistics.median(dlib_ms) / statistics.median(fast_ms), 1),
        "max_abs_diff": float(np.abs(expected - got).max()),
        "convert_s": round(convert_s, 2),
        "cached_load_s": round(cached_s, 2),
    }
    report(result, args.json)


if __name__ == "__main__":
    main()
