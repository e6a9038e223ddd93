"""Photo -> faces -> 128-d encodings, with dlib's models as face_recognition ships them.

The models load on first use (never at import) and once per process. Detection runs on a
resized copy chosen so that the smallest wanted face reaches the HOG detector's 80 px window;
landmarks and the 150x150 chip are then taken from the full-resolution photo at the found
boxes, so encodings are those face_recognition computes for the same boxes.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from .errors import EngineError
from .images import Photo
from .results import Box

__all__ = ["DIMENSIONS", "DetectedFace", "DlibEncoder", "Encoder", "default_encoder", "detection_scale"]

DIMENSIONS = 128
#: The smallest face dlib's HOG detector finds without upsampling, with a margin: measured
#: here, faces down to ~54 px are found (its boxes are quantised: 73, 87, 104 px...).
HOG_MIN_FACE_PX = 64
#: Faces smaller than this share of the photo's long side are not looked for (as
#: face_recognition's CLI: 1600 px at upsample 1 reaches ~40 px), but never above
#: GUARANTEED_FACE_PX: a face that wide is found in a photo of any size.
MIN_FACE_SHARE = 1 / 40
GUARANTEED_FACE_PX = 80
MAX_UPSCALE = 2.0


@dataclass(frozen=True)
class DetectedFace:
    """A face found in a photo: its box in the original's coordinates and its encoding."""

    box: Box
    encoding: NDArray[np.float32]
    #: dlib's 5 landmarks as (x, y) in the original's pixels: the outer and inner corners of the
    #: eye on the photo's right, then of the eye on its left, then the base of the nose. None
    #: from an encoder that gives none (quality checks then skip the pose).
    landmarks: tuple[tuple[float, float], ...] | None = None


class Encoder(Protocol):
    """Finds faces and encodes them. `DlibEncoder` is the real one; tests may pass a fake."""

    def encode(self, photo: Photo, min_face_px: int) -> list[DetectedFace]:
        """Every face found, looking down to `min_face_px` wide (original pixels); top-to-bottom order."""
        ...


def detection_scale(width: int, height: int, min_face_px: float) -> float:
    """The resize factor for detection: the smallest face looked for just reaches the detector.

    Below 1 for big photos (cheaper), above 1 for small ones (like dlib's upsampling).
    """
    smallest = max(min_face_px, min(max(width, height) * MIN_FACE_SHARE, GUARANTEED_FACE_PX))
    return min(MAX_UPSCALE, HOG_MIN_FACE_PX / smallest)


def _model_dir() -> Path:
    # Found without importing face_recognition_models, whose __init__ imports pkg_resources.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError("The face models are missing: reinstall consentmatch (it needs face_recognition_models).")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class DlibEncoder:
    """dlib's HOG detector, 5-point landmarks and ResNet encoder (face_recognition's defaults)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # dlib's objects are not documented as thread-safe
        self._models: tuple[Any, Any, Any] | None = None

    def _load(self) -> tuple[Any, Any, Any]:
        if self._models is None:
            import dlib

            models = _model_dir()
            try:
                self._models = (
                    dlib.get_frontal_face_detector(),
                    dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat")),
                    dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat")),
                )
            except RuntimeError as exc:
                raise EngineError(f"The face models could not be loaded ({exc}): reinstall consentmatch.") from None
        return self._models

    def encode(self, photo: Photo, min_face_px: int) -> list[DetectedFace]:
        import dlib

        pixels = photo.pixels
        height, width = pixels.shape[:2]
        scale = detection_scale(width, height, min_face_px / photo.scale)
        if abs(scale - 1.0) > 1e-3:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
        else:
            scale, small = 1.0, pixels
        with self._lock:
            detector, landmarks, net = self._load()
            try:
                found = detector(small, 0)
                rects = [
                    dlib.rectangle(
                        round(r.left() / scale), round(r.top() / scale), round(r.right() / scale), round(r.bottom() / scale)
                    )
                    for r in found
                ]
                rects.sort(key=lambda r: (r.top(), r.left()))
                if not rects:
                    return []
                shapes = dlib.full_object_detections()
                for rect in rects:
                    shapes.append(landmarks(pixels, rect))
                vectors = net.compute_face_descriptor(pixels, shapes, 0)
            except RuntimeError as exc:
                raise EngineError(f"dlib failed on '{photo.name}' ({exc}).") from None
        return [
            DetectedFace(
                box=_box(rect, width, height, photo.scale),
                encoding=np.asarray(vec, dtype=np.float32),
                landmarks=tuple((p.x * photo.scale, p.y * photo.scale) for p in shape.parts()),
            )
            for rect, shape, vec in zip(rects, shapes, vectors)
        ]


def _box(rect: Any, width: int, height: int, scale: float) -> Box:
    """A dlib rectangle clipped to the photo, in the original's coordinates."""
    top, right = max(rect.top(), 0), min(rect.right(), width)
    bottom, left = min(rect.bottom(), height), max(rect.left(), 0)
    return Box(round(top * scale), round(right * scale), round(bottom * scale), round(left * scale))


_shared: Encoder | None = None
_shared_lock = threading.Lock()


def default_encoder() -> Encoder:
    """The process-wide encoder, so models load once per process, on first use.

    `CONSENTMATCH_ENCODER=dlib` forces dlib (the reference backend).
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            choice = os.environ.get("CONSENTMATCH_ENCODER", "dlib").strip().lower()
            if choice not in ("dlib", ""):
                raise EngineError(f"CONSENTMATCH_ENCODER={choice!r} is not a backend: use dlib.")
            _shared = DlibEncoder()
        return _shared
