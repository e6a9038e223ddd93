"""What every encoder and its callers share: the encoding's size, a found face, the `Encoder` protocol.

Free of Pillow, dlib and ONNX Runtime (numpy only for type checking), so the storage and search
code can name `DIMENSIONS` without loading an image library, and a custom encoder can implement
`Encoder` without ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..results import Box

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ..images import Photo

__all__ = ["DETECTORS", "DIMENSIONS", "DetectedFace", "Detector", "Encoder"]

#: The face detectors `Settings.detector` may name: dlib's HOG (face_recognition's own pipeline)
#: and libfacedetection's CNN on ONNX Runtime (6-8x cheaper, `vision.yunet`; the default where it runs).
DETECTORS = ("hog", "yunet")

#: The length of a face encoding: dlib's face ResNet gives 128 numbers per face.
DIMENSIONS = 128


@dataclass(frozen=True)
class DetectedFace:
    """A face found in a photo: its box in the original's coordinates and its encoding."""

    box: Box
    encoding: NDArray[np.float32]
    #: dlib's 5 landmarks as (x, y) in the original's pixels: the outer and inner corners of the
    #: eye on the photo's right, then of the eye on its left, then the base of the nose. None
    #: from an encoder that gives none (quality checks then skip the pose).
    landmarks: tuple[tuple[float, float], ...] | None = None
    #: The detector that found the face (`Detector.name`: "hog", "yunet"); None from an encoder that does not say.
    detector: str | None = None


class Encoder(Protocol):
    """Finds faces and encodes them. `DlibEncoder` and `OnnxEncoder` are the real ones; tests may pass a fake."""

    def encode(self, photo: Photo, min_face_px: int) -> list[DetectedFace]:
        """Every face found, looking down to `min_face_px` wide (original pixels); top-to-bottom order.

        May be called from several threads at once (a gallery encodes several photos in parallel).
        """
        ...


class Detector(Protocol):
    """Finds faces for dlib's landmark predictor: `HogDetector` (dlib.py) and `YuNetDetector` (yunet.py)."""

    #: How the detector is named in settings and on the CLI (a member of DETECTORS for ours).
    name: str

    def detect(self, photo: Photo, min_face_px: int) -> list[Box]:
        """Boxes framed as dlib's HOG detector frames a face, in `photo.pixels` coordinates.

        Looks down to faces `min_face_px` wide (original pixels). Thread-safe.
        """
        ...
