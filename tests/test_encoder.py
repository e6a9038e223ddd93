"""dlib's face detector read back from the cache, and encoders called from several threads at once."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dlib
import numpy as np
import pytest
from PIL import Image

from consentmatch.vision import default_encoder
from consentmatch.vision.dlib import DlibEncoder, HogDetector, frontal_face_detector
from consentmatch.images import load_photo
from consentmatch.vision.onnx import OnnxEncoder

from .conftest import DATA, EXAMPLES

PHOTOS = sorted((EXAMPLES / "probes").glob("*")) + sorted((DATA / "edge").glob("*"))


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the detector file, written once for this module."""
    folder = tmp_path_factory.mktemp("cache")
    frontal_face_detector(folder)
    return folder


def _files(folder: Path) -> tuple[Path, Path]:
    (detector,) = folder.glob("*.svm")
    return detector, detector.with_name(detector.name + ".sha256")


def _detections(detector: Any, pixels: np.ndarray) -> list[tuple[tuple[int, int, int, int], float]]:
    # A threshold below dlib's own lists weak candidates too: any difference in the weights shows.
    rects, scores, _ = detector.run(pixels, 0, -0.5)
    return [((r.left(), r.top(), r.right(), r.bottom()), score) for r, score in zip(rects, scores)]


def test_the_cached_detector_finds_what_dlibs_own_finds(cached: Path) -> None:
    builtin, from_file = dlib.get_frontal_face_detector(), frontal_face_detector(cached)
    found = 0
    for path in PHOTOS:
        image = Image.open(path).convert("RGB")
        image.thumbnail((1000, 1000))  # the detector runs on downscaled copies anyway; keeps this fast
        pixels = np.asarray(image)
        expected = _detections(builtin, pixels)
        assert _detections(from_file, pixels) == expected, path.name
        found += len(expected)
    assert found >= len(PHOTOS)


def test_the_cache_holds_the_detector_and_its_checksum(cached: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    detector, checksum = _files(cached)
    assert detector.name == f"frontal_face_detector-dlib{dlib.__version__}.svm"
    assert checksum.read_text() == f"{hashlib.sha256(detector.read_bytes()).hexdigest()}  {detector.name}\n"

    def no_decoding() -> None:
        raise AssertionError("dlib's built-in detector decoded again despite a valid cache")

    monkeypatch.setattr(dlib, "get_frontal_face_detector", no_decoding)
    assert frontal_face_detector(cached).detection_window_width == 80


@pytest.mark.parametrize("damage", ["corrupt file", "missing file", "missing checksum", "wrong checksum", "intact but unreadable"])
def test_a_damaged_detector_file_is_rebuilt(cached: Path, tmp_path: Path, damage: str) -> None:
    good, good_checksum = _files(cached)
    detector, checksum = tmp_path / good.name, tmp_path / good_checksum.name
    detector.write_bytes(good.read_bytes())
    checksum.write_bytes(good_checksum.read_bytes())
    if damage == "corrupt file":
        data = bytearray(detector.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte: the checksum catches it, whatever dlib would make of it
        detector.write_bytes(bytes(data))
    elif damage == "missing file":
        detector.unlink()
    elif damage == "missing checksum":
        checksum.unlink()
    elif damage == "wrong checksum":
        checksum.write_text("0" * 64 + f"  {detector.name}\n")
    else:  # a checksum that holds over a file dlib cannot read: rebuilt, not an error
        detector.write_bytes(good.read_bytes()[:1000])
        checksum.write_text(f"{hashlib.sha256(detector.read_bytes()).hexdigest()}  {detector.name}\n")

    assert frontal_face_detector(tmp_path).detection_window_width == 80
    assert detector.read_bytes() == good.read_bytes()
    assert checksum.read_bytes() == good_checksum.read_bytes()


def test_an_unwritable_cache_still_detects(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    (face,) = DlibEncoder(cache=blocker / "consentmatch").encode(load_photo(EXAMPLES / "probes" / "obama_small.jpg"), 40)
    assert face.box.right - face.box.left > 50
    assert blocker.read_text() == "a file where the cache folder should be"


def test_each_thread_has_its_own_detector(cached: Path) -> None:
    hog = DlibEncoder(cache=cached).detector
    assert isinstance(hog, HogDetector)
    mine = hog._detector()
    with ThreadPoolExecutor(1) as pool:
        theirs = pool.submit(hog._detector).result()
    assert hog._detector() is mine and theirs is not mine


@pytest.mark.parametrize("backend", ["onnx", "dlib"])
def test_threads_encode_as_one_thread_does(backend: str, cached: Path) -> None:
    encoder = default_encoder() if backend == "onnx" else DlibEncoder(cache=cached)
    assert isinstance(encoder, OnnxEncoder) == (backend == "onnx")
    photos = [load_photo(EXAMPLES / "probes" / name) for name in
              ("kit_with_rose.jpg", "two_people.jpg", "obama_small.jpg", "lin-manuel-miranda.png")]
    serial = [encoder.encode(photo, 40) for photo in photos]
    started = threading.Barrier(4)

    def encode(photo: Any) -> Any:
        started.wait(timeout=30)  # the first photos of all four threads scan at the same time
        return encoder.encode(photo, 40)

    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(encode, photos * 2))
    for one, other in zip(serial * 2, threaded):
        assert [(f.box, f.landmarks) for f in other] == [(f.box, f.landmarks) for f in one]
        assert all(np.abs(a.encoding - b.encoding).max() < 1e-6 for a, b in zip(one, other))
