"""Photo -> faces -> 128-d encodings, with dlib's models as face_recognition ships them.

The models load on first use (never at import) and once per process. Detection runs on a
resized copy chosen so that the smallest wanted face reaches the HOG detector's 80 px window;
landmarks and the 150x150 chip are then taken from the full-resolution photo at the found
boxes, so encodings are those face_recognition computes for the same boxes.

The last step, chip -> encoding, has two backends: dlib's ResNet itself (`DlibEncoder`, the
reference) and the same network converted to ONNX (`vision.onnx.OnnxEncoder`, ~20x faster,
equal within 1e-4), which builds on this module (never the other way round).
`consentmatch.vision.default_encoder` picks one from the settings.

Encoders may be called from several threads at once, and photos are then detected in parallel
(dlib releases the GIL while it scans); see `DlibEncoder` for what is shared and what is not.
"""

from __future__ import annotations

import importlib.util
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from ..errors import EngineError
from ..images import Photo
from ..results import Box
from .cache import read_checked, write_checked
from .types import DIMENSIONS, DetectedFace, Detector

__all__ = [
    "DlibEncoder",
    "HogDetector",
    "load_detector",
    "detection_scale",
    "face_chips",
    "frontal_face_detector",
    "model_dir",
]

T = TypeVar("T")

#: The smallest face dlib's HOG detector finds without upsampling, with a margin: measured
#: here, faces down to ~54 px are found (its boxes are quantised: 73, 87, 104 px...).
HOG_MIN_FACE_PX = 64
#: Faces smaller than this share of the photo's long side are not looked for (as
#: face_recognition's CLI: 1600 px at upsample 1 reaches ~40 px), but never above
#: GUARANTEED_FACE_PX: a face that wide is found in a photo of any size.
MIN_FACE_SHARE = 1 / 40
GUARANTEED_FACE_PX = 80
MAX_UPSCALE = 2.0
#: dlib's face ResNet, its input chip size and the margin around the landmarks
#: (face_recognition_model_v1.compute_face_descriptor's defaults).
RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
CHIP_SIZE = 150
CHIP_PADDING = 0.25


def detection_scale(width: int, height: int, min_face_px: float) -> float:
    """The resize factor for detection: the smallest face looked for just reaches the detector.

    Below 1 for big photos (cheaper), above 1 for small ones (like dlib's upsampling).
    """
    smallest = max(min_face_px, min(max(width, height) * MIN_FACE_SHARE, GUARANTEED_FACE_PX))
    return min(MAX_UPSCALE, HOG_MIN_FACE_PX / smallest)


def model_dir() -> Path:
    """The folder of face_recognition_models' model files."""
    # Found without importing face_recognition_models, whose __init__ imports pkg_resources.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError("The face models are missing: reinstall consentmatch (it needs face_recognition_models).")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class DlibEncoder:
    """dlib's HOG detector, 5-point landmarks and ResNet encoder (face_recognition's defaults).

    The descriptor step is `_describe`; `OnnxEncoder` keeps the detection and landmarks and
    replaces only that step.

    Safe to call from several threads, which then detect in parallel (`HogDetector` keeps one
    dlib detector per thread; `vision.yunet.YuNetDetector` may replace it). The landmark
    predictor is shared: its call only reads the model. dlib's ResNet runs one call at a time,
    under a lock: a dlib network keeps every layer's output in itself.

    Args:
        cache: the folder that keeps dlib's detector between processes (`Settings.cache_dir`);
            None keeps nothing on disk, and each thread decodes dlib's built-in detector.
        detector: what finds the faces; dlib's HOG (`HogDetector`, face_recognition's own) by default.
    """

    def __init__(self, *, cache: Path | None = None, detector: Detector | None = None) -> None:
        self._cache = cache
        self.detector: Detector = detector if detector is not None else HogDetector(cache=cache)
        self._lock = threading.Lock()  # loading the models, and every call of dlib's ResNet
        self._predictor: Any = None
        self._net: Any = None

    def _landmarks(self) -> Any:
        """dlib's 5-point landmark predictor, one for all threads."""
        if self._predictor is None:
            with self._lock:
                if self._predictor is None:
                    self._predictor = _loaded(
                        lambda dlib: dlib.shape_predictor(str(model_dir() / "shape_predictor_5_face_landmarks.dat"))
                    )
        return self._predictor

    def load_models(self) -> None:
        """Load the detector, the landmark predictor and the network now rather than at the first face."""
        load_detector(self.detector)
        self._landmarks()
        with self._lock:
            self._load_net()

    def _load_net(self) -> Any:
        """dlib's ResNet, loaded only when this backend encodes. Call it under the lock."""
        if self._net is None:
            self._net = _loaded(lambda dlib: dlib.face_recognition_model_v1(str(model_dir() / RESNET_FILE)))
        return self._net

    def encode(self, photo: Photo, min_face_px: int) -> list[DetectedFace]:
        rects, shapes = self._locate(photo, min_face_px)
        if not rects:
            return []
        height, width = photo.pixels.shape[:2]
        return [
            DetectedFace(
                box=_box(rect, width, height, photo.scale),
                encoding=vec,
                landmarks=tuple((p.x * photo.scale, p.y * photo.scale) for p in shape.parts()),
                detector=self.detector.name,
            )
            for rect, shape, vec in zip(rects, shapes, self._describe(photo, shapes))
        ]

    def _locate(self, photo: Photo, min_face_px: int) -> tuple[list[Any], Any]:
        """The faces' dlib rectangles in the photo's pixels, top to bottom, and their landmarks."""
        import dlib

        boxes = self.detector.detect(photo, min_face_px)
        landmarks = self._landmarks()
        rects = [dlib.rectangle(b.left, b.top, b.right, b.bottom) for b in boxes]
        rects.sort(key=lambda r: (r.top(), r.left()))
        shapes = dlib.full_object_detections()
        try:
            for rect in rects:
                shapes.append(landmarks(photo.pixels, rect))
        except RuntimeError as exc:
            raise EngineError(f"dlib failed on '{photo.name}' ({exc}).") from None
        return rects, shapes

    def _describe(self, photo: Photo, shapes: Any) -> NDArray[np.float32]:
        """The encodings of the faces at `shapes` (dlib's landmarks) in the photo, one row each."""
        with self._lock:
            net = self._load_net()
            try:
                vectors = net.compute_face_descriptor(photo.pixels, shapes, 0)
            except RuntimeError as exc:
                raise EngineError(f"dlib failed on '{photo.name}' ({exc}).") from None
        return _rows(vectors)

    def encode_chips(self, chips: NDArray[np.uint8]) -> NDArray[np.float32]:
        """The encodings of aligned face chips, (n, 150, 150, 3) RGB as `face_chips` cuts them, one row each.

        Raises:
            EngineError: dlib failed.
        """
        with self._lock:
            net = self._load_net()
            try:
                vectors = net.compute_face_descriptor(list(chips), 0)
            except RuntimeError as exc:
                raise EngineError(f"dlib failed to encode {len(chips)} face chips ({exc}).") from None
        return _rows(vectors)


class HogDetector:
    """dlib's HOG face detector on a copy resized so the smallest wanted face reaches its window.

    face_recognition's own detector: boxes equal its `face_locations` at the same scale. Each
    thread gets its own dlib detector (dlib's object detector keeps its scanning state in
    itself, so one must never scan two photos at once), read from the cache in ~2 ms
    (`frontal_face_detector`); dlib releases the GIL while it scans.

    Args:
        cache: the folder that keeps dlib's detector between processes; None decodes dlib's copy.
    """

    name = "hog"

    def __init__(self, *, cache: Path | None = None) -> None:
        self._cache = cache
        self._local = threading.local()  # this thread's own detector

    def _detector(self) -> Any:
        """This thread's HOG face detector, loaded on its first photo."""
        detector = getattr(self._local, "detector", None)
        if detector is None:
            detector = self._local.detector = frontal_face_detector(self._cache)
        return detector

    def detect(self, photo: Photo, min_face_px: int) -> list[Box]:
        pixels = photo.pixels
        height, width = pixels.shape[:2]
        # The reach is the original's (a big JPEG may be decoded at half size: images.HALF_DECODE_PX).
        scale = detection_scale(round(width * photo.scale), round(height * photo.scale), min_face_px) * photo.scale
        if abs(scale - 1.0) > 1e-3:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
        else:
            scale, small = 1.0, pixels
        try:
            found = self._detector()(small, 0)
        except RuntimeError as exc:
            raise EngineError(f"dlib failed on '{photo.name}' ({exc}).") from None
        return [
            Box(top=round(r.top() / scale), right=round(r.right() / scale), bottom=round(r.bottom() / scale),
                left=round(r.left() / scale))
            for r in found
        ]


def load_detector(detector: Detector) -> None:
    """Load a detector's model now, when it can say (ours can)."""
    load = getattr(detector, "load_models", None)
    if load is not None:
        load()


def _loaded(make: Callable[[Any], T]) -> T:
    """`make(dlib)`, with dlib's load failures as EngineError."""
    import dlib

    try:
        return make(dlib)
    except RuntimeError as exc:
        raise EngineError(f"The face models could not be loaded ({exc}): reinstall consentmatch.") from None


_detector_file_lock = threading.Lock()


def frontal_face_detector(folder: Path | None) -> Any:
    """A new instance of dlib's HOG face detector, read from its file in `folder` when cached there.

    `dlib.get_frontal_face_detector()` decodes the detector dlib embeds as a string, 0.4-0.75 s
    on every call; reading back the file its `save` wrote takes ~2 ms and finds the same faces
    (a test checks it on real photos). The file is named after dlib's version and checked like
    the converted ResNet (`cache.py`): a damaged copy is rebuilt, not trusted. A folder that
    cannot be written, or None, means decoding dlib's copy each time.

    Raises:
        EngineError: dlib cannot build its detector.
    """
    import dlib

    if folder is None:
        return _loaded(lambda dlib: dlib.get_frontal_face_detector())
    target = folder / f"frontal_face_detector-dlib{dlib.__version__}.svm"
    with _detector_file_lock:  # one thread builds a missing file; the others then read it
        if read_checked(target) is not None:
            try:
                return dlib.fhog_object_detector(str(target))
            except RuntimeError:
                pass  # a file this dlib cannot read, though intact: rebuilt below
        detector = _loaded(lambda dlib: dlib.get_frontal_face_detector())
        try:
            with tempfile.TemporaryDirectory(prefix="consentmatch-") as scratch:
                saved = Path(scratch) / target.name  # dlib saves only to a path
                detector.save(str(saved))
                write_checked(target, saved.read_bytes())
        except (OSError, RuntimeError):
            pass  # nowhere to save it: the cache is skipped
        return detector


def face_chips(photo: Photo, shapes: Any) -> NDArray[np.uint8]:
    """The aligned 150x150 chips dlib's ResNet reads, (n, 150, 150, 3), for the faces at `shapes`."""
    import dlib

    try:
        chips = dlib.get_face_chips(photo.pixels, shapes, size=CHIP_SIZE, padding=CHIP_PADDING)
    except RuntimeError as exc:
        raise EngineError(f"dlib failed on '{photo.name}' ({exc}).") from None
    return np.stack(chips).astype(np.uint8, copy=False)


def _rows(vectors: Any) -> NDArray[np.float32]:
    """dlib's descriptors (doubles) as float32 rows."""
    return np.array([np.asarray(v) for v in vectors], dtype=np.float32).reshape(-1, DIMENSIONS)


def _box(rect: Any, width: int, height: int, scale: float) -> Box:
    """A dlib rectangle clipped to the photo, in the original's coordinates."""
    top, right = max(rect.top(), 0), min(rect.right(), width)
    bottom, left = min(rect.bottom(), height), max(rect.left(), 0)
    return Box(round(top * scale), round(right * scale), round(bottom * scale), round(left * scale))
