"""Pure checks on the faces found in a photo: which one to use, or why none is usable.

`single_face` picks the one face a call needs. `assess` measures that face (size, sharpness,
brightness, pose, how much of it the border cuts) and lists every reason it falls below a
quality bar; `check_quality` raises `QualityError` with those reasons. Reasons are the names
AWS Rekognition's IndexFaces gives (`UnindexedFace.Reasons`) where it has one;
`HIGH_BRIGHTNESS` and `CUT_BY_BORDER` are ours.

The bars (`BARS`) come in three levels, and probes get a laxer bar than enrollments: a probe is
compared once, while a template is compared with every later probe for years.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from .vision.types import DetectedFace
from .errors import FaceTooSmallError, InvalidArgumentError, MultipleFacesError, NoFaceError, QualityError
from .images import Photo
from .results import Box

__all__ = [
    "BARS",
    "CUT_ALLOWANCE",
    "CUT_BY_BORDER",
    "EXCEEDS_MAX_FACES",
    "EXTREME_POSE",
    "HIGH_BRIGHTNESS",
    "LOW_BRIGHTNESS",
    "LOW_SHARPNESS",
    "QUALITY_LEVELS",
    "REASONS",
    "SMALL_BOUNDING_BOX",
    "Bar",
    "QualityReport",
    "assess",
    "check_level",
    "check_quality",
    "measure",
    "single_face",
]

QUALITY_LEVELS = ("low", "medium", "high")

SMALL_BOUNDING_BOX = "SMALL_BOUNDING_BOX"  # the face is narrower than the bar's floor
LOW_SHARPNESS = "LOW_SHARPNESS"  # blurred: out of focus, moving, or a small face blown up
LOW_BRIGHTNESS = "LOW_BRIGHTNESS"  # the face is too dark
HIGH_BRIGHTNESS = "HIGH_BRIGHTNESS"  # the face is washed out (overexposed, flash)
EXTREME_POSE = "EXTREME_POSE"  # turned, tilted or rolled too far from the camera
CUT_BY_BORDER = "CUT_BY_BORDER"  # part of the face lies outside the photo
EXCEEDS_MAX_FACES = "EXCEEDS_MAX_FACES"  # more than one face where the call needs one
#: Every reason, in the order reports list them.
REASONS = (
    SMALL_BOUNDING_BOX,
    LOW_SHARPNESS,
    LOW_BRIGHTNESS,
    HIGH_BRIGHTNESS,
    EXTREME_POSE,
    CUT_BY_BORDER,
    EXCEEDS_MAX_FACES,
)

_FIXES = {
    SMALL_BOUNDING_BOX: "use a closer or larger photo",
    LOW_SHARPNESS: "use a sharp, focused photo at its original size",
    LOW_BRIGHTNESS: "use a better-lit photo",
    HIGH_BRIGHTNESS: "avoid overexposure and direct flash",
    EXTREME_POSE: "use a photo facing the camera",
    CUT_BY_BORDER: "use a photo with the whole face in frame",
    EXCEEDS_MAX_FACES: "crop it to the one person",
}


@dataclass(frozen=True)
class Bar:
    """What a face must meet at one level, for enrollment or for a probe.

    Sizes are in the original photo's pixels, brightness is mean luma (0-255) over the face
    box, sharpness is `measure`'s, angles are degrees either way, `max_cut` a share of the box.
    """

    min_face_px: int
    min_sharpness: float
    min_brightness: float
    max_brightness: float
    max_yaw: float
    max_pitch: float
    max_roll: float
    max_cut: float


# Measured on the example photos (examples/, tests/data/edge) and on degraded copies of them:
# every clear single-face photo passes medium for enrollment (sharpness >= 20, brightness
# 105-160, |yaw| <= 25, |pitch| <= 29, |roll| <= 13); a Gaussian blur of 2% of the face width
# gives sharpness <= 7 (and moves the encoding ~0.35); darkening to 1/4 gives brightness <= 37.
# Brightness limits are low on purpose: dark skin lowers mean luma too, and a bar that refuses
# well-lit dark faces would be a demographic differential of its own.
#   (level, for_enrollment):  face px  sharp  dark  bright  yaw  pitch  roll  cut
BARS: Mapping[tuple[str, bool], Bar] = MappingProxyType({
    ("low", True):      Bar(64,       4,     25,   225,    45,  45,    45,   0.20),
    ("medium", True):   Bar(80,       8,     40,   200,    30,  35,    30,   0.05),
    ("high", True):     Bar(112,      15,    55,   185,    20,  25,    15,   0.00),
    ("low", False):     Bar(32,       2,     15,   240,    60,  60,    60,   0.50),
    ("medium", False):  Bar(40,       4,     25,   220,    45,  45,    45,   0.30),
    ("high", False):    Bar(64,       8,     40,   200,    30,  35,    30,   0.15),
})  # fmt: skip

#: What each detector's boxes add to `max_cut` (bars over 0 only). The `cut` bars were set on
#: dlib's HOG boxes, which shrink to the part of a face left in the photo; yunet's box follows
#: the whole face past the border, so it reads the same crop as more cut: on 153 crops of the
#: 9 enrollment photos cut by 0-40% of the face on each side, medians 0.103 vs 0.061 at 10%,
#: 0.194 vs 0.137 at 20%, 0.276 vs 0.245 at 30%, while the crop moves the encoding the same
#: with either (0.14, 0.23-0.24, 0.31-0.33). With 0.05 more, yunet passes the crops HOG passes
#: at each cut (low: 36/32/12 of 36 at 10/20/30% vs HOG's 36/29/10; medium 17/3/0 vs 17/3/1);
#: a bar of 0 (high enrollment: nothing cut) stays 0 (benchmarks/README.md, "Issue 25").
CUT_ALLOWANCE: Mapping[str, float] = MappingProxyType({"yunet": 0.05})

#: The face crop is resampled to this side before the Laplacian, so sharpness does not depend
#: on face size. Below most accepted faces, so it is mostly an area-averaging downscale.
SHARPNESS_SIDE = 64
#: Frontal faces in the examples have the base of the nose ~0.75 inter-eye distances below the
#: eye line; its depth in front of the eyes is taken as 0.35 (an average face). The angles are
#: therefore rough (about +-10 degrees), but a turned or tilted head stands out.
NOSE_DROP = 0.75
NOSE_DEPTH = 0.35


@dataclass(frozen=True)
class QualityReport:
    """How one face measures up to a quality bar: `reasons` empty means it passes.

    `measures`: face_px (the box's width; its longest side when the border cuts it), sharpness,
    brightness, yaw, pitch and roll (degrees; None when the encoder gives no landmarks), cut
    (share of the face outside the photo), faces.
    """

    reasons: tuple[str, ...]
    measures: Mapping[str, float | None]
    level: str
    for_enrollment: bool

    @property
    def ok(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {
            "reasons": list(self.reasons),
            "measures": dict(self.measures),
            "level": self.level,
            "for_enrollment": self.for_enrollment,
        }


def single_face(faces: Sequence[DetectedFace], photo: str, min_face_px: int = 0) -> DetectedFace:
    """The one face of a photo that must hold exactly one (enrollment, verification probes).

    Raises:
        NoFaceError, MultipleFacesError, FaceTooSmallError: naming the photo and the fix.
    """
    if not faces:  # the caller's floor (40 px for a probe), else the enrollment default
        raise NoFaceError(
            f"No face found in '{photo}': use a frontal, well-lit photo with the face at least "
            f"{min_face_px or 80} px wide (a photo shown sideways without EXIF orientation needs rotating upright first).",
            photo,
        )
    if len(faces) > 1:
        raise MultipleFacesError(
            f"{len(faces)} faces found in '{photo}': it must show exactly one person; crop it to that face.",
            photo,
        )
    face = faces[0]
    if face.box.width < min_face_px:
        raise FaceTooSmallError(
            f"The face in '{photo}' is {face.box.width} px wide, below the {min_face_px} px minimum: "
            "use a closer or larger photo.",
            photo,
        )
    return face


def check_level(level: str) -> str:
    """Raises InvalidArgumentError unless `level` is low, medium or high."""
    if level not in QUALITY_LEVELS:
        raise InvalidArgumentError(f"Quality level {level!r} is not one of {', '.join(QUALITY_LEVELS)}.")
    return level


def measure(photo: Photo, face: DetectedFace) -> dict[str, float | None]:
    """The quality measures of one face, in the photo's upright pixels; see `QualityReport`."""
    gray = _luma(_crop(photo, face.box))
    pose = _pose(face.landmarks) if face.landmarks else None
    yaw, pitch, roll = pose if pose else (None, None, None)
    height, width = photo.pixels.shape[:2]
    full_width, full_height = round(width * photo.scale), round(height * photo.scale)
    return {
        "face_px": float(_face_px(face.box, full_width, full_height)),
        "sharpness": round(_sharpness(gray), 2),
        "brightness": round(float(gray.mean()), 1) if gray.size else 0.0,
        "yaw": yaw,
        "pitch": pitch,
        "roll": roll,
        "cut": round(_cut(face.box, full_width, full_height), 3),
    }


def assess(
    photo: Photo,
    face: DetectedFace,
    *,
    level: str = "medium",
    for_enrollment: bool = True,
    faces_found: int = 1,
    min_face_px: int | None = None,
) -> QualityReport:
    """Every reason the face falls below the quality bar of `level`.

    Args:
        photo: the decoded photo the face was found in.
        face: the face to judge (its box, and its landmarks for the pose).
        level: low, medium or high.
        for_enrollment: True for a template to keep, False for a probe (a laxer bar).
        faces_found: how many faces the photo holds, where the call needs exactly one;
            above 1 adds EXCEEDS_MAX_FACES.
        min_face_px: overrides the bar's smallest face width (the caller's own floor).

    Returns:
        The reasons (empty when it passes) and the measures behind them.

    Raises:
        InvalidArgumentError: an unknown level.
    """
    bar = BARS[(check_level(level), for_enrollment)]
    m = measure(photo, face)
    m["faces"] = float(faces_found)
    floor = bar.min_face_px if min_face_px is None else min_face_px
    max_cut = bar.max_cut + CUT_ALLOWANCE.get(face.detector or "", 0.0) if bar.max_cut > 0 else 0.0
    failed = {
        SMALL_BOUNDING_BOX: _lt(m["face_px"], floor),
        LOW_SHARPNESS: _lt(m["sharpness"], bar.min_sharpness),
        LOW_BRIGHTNESS: _lt(m["brightness"], bar.min_brightness),
        HIGH_BRIGHTNESS: _gt(m["brightness"], bar.max_brightness),
        EXTREME_POSE: _gt(_abs(m["yaw"]), bar.max_yaw)
        or _gt(_abs(m["pitch"]), bar.max_pitch)
        or _gt(_abs(m["roll"]), bar.max_roll),
        CUT_BY_BORDER: _gt(m["cut"], max_cut),
        EXCEEDS_MAX_FACES: faces_found > 1,
    }
    reasons = tuple(reason for reason in REASONS if failed[reason])
    return QualityReport(reasons=reasons, measures=MappingProxyType(m), level=level, for_enrollment=for_enrollment)


def check_quality(
    photo: Photo,
    face: DetectedFace,
    *,
    level: str = "medium",
    for_enrollment: bool = True,
    faces_found: int = 1,
    min_face_px: int | None = None,
) -> QualityReport:
    """`assess`, raising when the face falls below the bar.

    Returns:
        The passing report.

    Raises:
        QualityError: with `.reasons`, naming the photo, each failed measure and the fix.
        InvalidArgumentError: an unknown level.
    """
    report = assess(
        photo, face, level=level, for_enrollment=for_enrollment, faces_found=faces_found, min_face_px=min_face_px
    )
    if report.ok:
        return report
    bar = BARS[(level, for_enrollment)]
    floor = bar.min_face_px if min_face_px is None else min_face_px
    m = report.measures
    found = {
        SMALL_BOUNDING_BOX: f"{m['face_px']:.0f} px wide, under {floor}",
        LOW_SHARPNESS: f"sharpness {m['sharpness']}, under {bar.min_sharpness}",
        LOW_BRIGHTNESS: f"brightness {m['brightness']}, under {bar.min_brightness}",
        HIGH_BRIGHTNESS: f"brightness {m['brightness']}, over {bar.max_brightness}",
        EXTREME_POSE: f"yaw {m['yaw']}, pitch {m['pitch']}, roll {m['roll']} degrees",
        CUT_BY_BORDER: f"{m['cut']:.0%} of the face outside the photo",
        EXCEEDS_MAX_FACES: f"{faces_found} faces",
    }
    details = "; ".join(f"{reason} ({found[reason]})" for reason in report.reasons)
    fixes = "; ".join(_FIXES[reason] for reason in report.reasons)
    use = "enrollment" if for_enrollment else "a probe"
    raise QualityError(
        f"The face in '{photo.name}' is below the {level} quality bar for {use}: {details}. Fix: {fixes}.",
        photo.name,
        report.reasons,
    )


def _lt(value: float | None, limit: float) -> bool:
    return value is not None and value < limit


def _gt(value: float | None, limit: float) -> bool:
    return value is not None and value > limit


def _abs(value: float | None) -> float | None:
    return None if value is None else abs(value)


def _crop(photo: Photo, box: Box) -> NDArray[np.uint8]:
    """The face box's pixels; boxes are in the original's pixels, a big JPEG may be decoded smaller."""
    s = photo.scale
    top, left = int(box.top / s), int(box.left / s)
    bottom, right = math.ceil(box.bottom / s), math.ceil(box.right / s)
    return photo.pixels[max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)]


def _luma(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Rec. 601 luma, 0-255."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return (rgb.astype(np.float32) @ weights).astype(np.float32)


def _sharpness(gray: NDArray[np.float32]) -> float:
    """Variance of the Laplacian over the face, normalised for size and contrast.

    The crop is resampled to SHARPNESS_SIDE px square (so a big face is not sharper for being
    big), and the Laplacian's variance is divided by the crop's own variance (so a dark or
    washed-out face does not read as blurred). x100: sharp faces score 20-150, blurred ones < 8.
    """
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    side = SHARPNESS_SIDE
    resample = Image.Resampling.BOX if min(gray.shape) >= side else Image.Resampling.BILINEAR
    g = np.asarray(Image.fromarray(gray).resize((side, side), resample), dtype=np.float64)
    laplacian = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    variance = float(g.var())
    return 0.0 if variance < 1e-6 else 100.0 * float(laplacian.var()) / variance


def _pose(landmarks: Sequence[tuple[float, float]]) -> tuple[float, float, float] | None:
    """Rough yaw, pitch and roll in degrees from dlib's 5 points (see NOSE_DROP and NOSE_DEPTH).

    Yaw > 0: the nose points to the photo's right; pitch > 0: the head bows; roll > 0: the eye
    line turns clockwise in the photo.
    """
    if len(landmarks) != 5:
        return None
    p = np.asarray(landmarks, dtype=np.float64)
    right_eye, left_eye = (p[0] + p[1]) / 2, (p[2] + p[3]) / 2  # the photo's right and left
    across = right_eye - left_eye
    spacing = float(np.hypot(*across))
    if spacing < 1e-6:
        return None
    unit = across / spacing
    down = np.array([-unit[1], unit[0]])  # along the face, towards the chin (image y grows down)
    nose = (p[4] - (right_eye + left_eye) / 2) / spacing
    yaw = math.degrees(math.atan2(float(nose @ unit), NOSE_DEPTH))
    pitch = math.degrees(math.atan2(float(nose @ down) - NOSE_DROP, NOSE_DEPTH))
    roll = math.degrees(math.atan2(across[1], across[0]))
    return round(yaw, 1), round(pitch, 1), round(roll, 1)


def _touches(box: Box, width: int, height: int) -> bool:
    return box.left <= 0 or box.top <= 0 or box.right >= width or box.bottom >= height


def _face_px(box: Box, width: int, height: int) -> int:
    """The face's width: the box's, or its longest side when the border cuts it.

    Boxes are square (HOG's, and yunet's HOG-like ones) and clipped to the photo, so a face the
    border cuts keeps its size in the side left whole: it is reported as cut (CUT_BY_BORDER),
    not as small. (yunet's box follows a cut face past the border, so its clipped width is the
    visible part only: a 110 px face cut by 30% read as 77 px.)
    """
    return max(box.width, box.height) if _touches(box, width, height) else box.width


def _cut(box: Box, width: int, height: int) -> float:
    """The share of the face outside the photo.

    Boxes are clipped to the photo, so the cut is read from the shape: dlib's HOG boxes are
    square, and a clipped one that touches the border has lost its missing side's share.
    """
    longest = max(box.width, box.height)
    if not _touches(box, width, height) or longest <= 0:
        return 0.0
    return 1.0 - min(box.width, box.height) / longest
