"""Quality gates: real photos pass, the same photos degraded on purpose are refused for the right reason."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from consentmatch import FaceError, InvalidArgumentError, QualityError
from consentmatch.vision import DetectedFace, default_encoder
from consentmatch.images import Photo, load_photo
from consentmatch.quality import (
    BARS,
    CUT_BY_BORDER,
    EXCEEDS_MAX_FACES,
    EXTREME_POSE,
    HIGH_BRIGHTNESS,
    LOW_BRIGHTNESS,
    LOW_SHARPNESS,
    QUALITY_LEVELS,
    SMALL_BOUNDING_BOX,
    assess,
    check_quality,
    single_face,
)
from consentmatch.results import Box

from .conftest import DATA, EXAMPLES

PEOPLE = sorted((EXAMPLES / "people").glob("*/*"))
# Single clear faces, at least 80 px wide: fit to enroll.
CLEAR = PEOPLE + [DATA / "edge" / "32bit.png", DATA / "edge" / "obama3.jpg"] + [
    EXAMPLES / "probes" / name
    for name in ("alex_lacamoire1.jpg", "johnsnow_test1.jpg", "lin-manuel-miranda.png", "obama1.jpg", "obama_small.jpg")
]
PARTIAL = [DATA / "edge" / "obama_partial_face.jpg", DATA / "edge" / "obama_partial_face2.jpg"]
DEGRADED_FROM = [EXAMPLES / "people" / "obama" / "obama.jpg", EXAMPLES / "people" / "rose_leslie" / "img2.jpg"]

_faces: dict[str, tuple[Photo, list[DetectedFace]]] = {}


def _encode(photo: Path | bytes) -> tuple[Photo, list[DetectedFace]]:
    """Decode and detect once per session (the real dlib models), keyed by content."""
    decoded = load_photo(photo)
    if decoded.sha256 not in _faces:
        _faces[decoded.sha256] = (decoded, default_encoder().encode(decoded, 40))
    return _faces[decoded.sha256]


def _one(photo: Path | bytes) -> tuple[Photo, DetectedFace]:
    decoded, faces = _encode(photo)
    assert len(faces) == 1, f"{decoded.name}: {len(faces)} faces"
    return decoded, faces[0]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# -- real photos ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", CLEAR, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_clear_photos_pass_medium_for_enrollment(path: Path) -> None:
    photo, face = _one(path)
    report = check_quality(photo, face, level="medium", for_enrollment=True)
    assert report.ok and report.reasons == ()
    assert report.measures["face_px"] == face.box.width
    assert all(report.measures[k] is not None for k in ("sharpness", "brightness", "yaw", "pitch", "roll", "cut"))


@pytest.mark.parametrize(("path", "low"), [(PARTIAL[0], ()), (PARTIAL[1], (CUT_BY_BORDER,))], ids=lambda p: getattr(p, "name", ""))
def test_faces_cut_by_the_border_are_probes_not_templates(path: Path, low: tuple[str, ...]) -> None:
    """`obama_partial_face2.jpg` sits at the low bar (0.25 with yunet's allowance): its `cut` read
    0.248 through a single full-size pass and 0.258 through yunet's coarse pass (HOG: 0.129), so
    low refuses it now, for the cut alone. Over the 153 cut photos of the quality set low passes
    36/34/11/2 at 10/20/30/40% against 36/32/12/0 before (HOG 36/29/10/0; benchmarks/README.md,
    "Issue 25, third pass"): the allowance stays 0.05."""
    photo, face = _one(path)
    assert assess(photo, face, level="medium", for_enrollment=True).reasons == (CUT_BY_BORDER,)
    assert assess(photo, face, level="low", for_enrollment=True).reasons == low
    assert assess(photo, face, level="medium", for_enrollment=False).ok


def test_small_probe_passes_as_probe_not_for_enrollment() -> None:
    photo, face = _one(EXAMPLES / "probes" / "obama-240p.jpg")
    assert face.box.width < 80
    assert assess(photo, face, for_enrollment=True).reasons == (SMALL_BOUNDING_BOX,)
    assert assess(photo, face, for_enrollment=False).ok


def test_more_than_one_face() -> None:
    photo, faces = _encode(EXAMPLES / "probes" / "two_people.jpg")
    assert len(faces) == 2
    report = assess(photo, faces[0], faces_found=len(faces))
    assert report.reasons == (EXCEEDS_MAX_FACES,) and report.measures["faces"] == 2
    for face in faces:  # each face of a group photo is a fine probe for 1:N
        assert assess(photo, face, for_enrollment=False).ok


# -- degraded on purpose -------------------------------------------------------------------

Degrade = Callable[[Image.Image, Box], Image.Image]


def _blur(share: float) -> Degrade:
    return lambda image, box: image.filter(ImageFilter.GaussianBlur(share * box.width))


def _brightness(factor: float) -> Degrade:
    return lambda image, box: ImageEnhance.Brightness(image).enhance(factor)


def _washed_out(share: float) -> Degrade:
    """Overexposure: every pixel pulled towards white."""

    def degrade(image: Image.Image, box: Box) -> Image.Image:
        pixels = np.asarray(image, dtype=np.float32)
        return Image.fromarray((pixels * (1 - share) + 255 * share).astype(np.uint8))

    return degrade


def _shrunk(face_px: int) -> Degrade:
    def degrade(image: Image.Image, box: Box) -> Image.Image:
        scale = face_px / box.width
        return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)

    return degrade


def _cropped(share: float) -> Degrade:
    """The photo's left edge moved into the face, through `share` of its width."""
    return lambda image, box: image.crop((round(box.left + share * box.width), 0, image.width, image.height))


def _rotated(degrees: float) -> Degrade:
    return lambda image, box: image.rotate(degrees, expand=True, fillcolor=(128, 128, 128))


ENROLLMENT_CASES = {
    "blurred": (_blur(0.02), LOW_SHARPNESS),  # a Gaussian of 2% of the face width
    "darkened": (_brightness(0.25), LOW_BRIGHTNESS),
    "brightened": (_washed_out(0.7), HIGH_BRIGHTNESS),
    "shrunk": (_shrunk(60), SMALL_BOUNDING_BOX),
    "cropped": (_cropped(0.3), CUT_BY_BORDER),
    "rotated": (_rotated(40), EXTREME_POSE),
}
PROBE_CASES = {
    "blurred": (_blur(0.04), LOW_SHARPNESS),
    "darkened": (_brightness(0.12), LOW_BRIGHTNESS),
    "brightened": (_washed_out(0.85), HIGH_BRIGHTNESS),
}


def _degraded(path: Path, degrade: Degrade) -> tuple[Photo, DetectedFace]:
    """The photo at 480 px (faces 100-150 px: quicker to search), then degraded around its face."""
    with Image.open(path) as image:
        source = image.convert("RGB")
    source.thumbnail((480, 480))
    _, face = _one(_png(source))
    return _one(_png(degrade(source, face.box)))


@pytest.mark.parametrize("case", ENROLLMENT_CASES)
@pytest.mark.parametrize("path", DEGRADED_FROM, ids=lambda p: p.parent.name)
def test_degraded_photos_are_refused_for_enrollment_with_the_reason(path: Path, case: str) -> None:
    degrade, reason = ENROLLMENT_CASES[case]
    photo, face = _degraded(path, degrade)
    assert assess(photo, face, level="medium", for_enrollment=True).reasons == (reason,)
    with pytest.raises(QualityError) as caught:
        check_quality(photo, face, level="medium", for_enrollment=True)
    assert caught.value.reasons == (reason,)
    assert isinstance(caught.value, FaceError) and caught.value.photo == "<bytes>"
    message = str(caught.value)
    assert reason in message and "medium quality bar for enrollment" in message and "\n" not in message


@pytest.mark.parametrize("case", PROBE_CASES)
def test_probes_get_a_laxer_bar_but_not_a_blind_one(case: str) -> None:
    degrade, reason = PROBE_CASES[case]
    photo, face = _degraded(DEGRADED_FROM[0], degrade)
    assert assess(photo, face, level="medium", for_enrollment=False).reasons == (reason,)
    mild, _ = ENROLLMENT_CASES[case]
    photo, face = _degraded(DEGRADED_FROM[0], mild)
    assert assess(photo, face, level="low", for_enrollment=False).ok


# -- pure checks on synthetic faces --------------------------------------------------------


def _photo(size: int = 400, scale: float = 1.0, level: int = 128) -> Photo:
    """A textured grey photo: sharp enough, mid brightness."""
    rng = np.random.default_rng(0)
    pixels = np.clip(rng.normal(level, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
    return Photo(name="synthetic.png", pixels=pixels, sha256="0" * 64, scale=scale)


def _face(box: Box = Box(100, 300, 300, 100), yaw: float = 0.0, pitch: float = 0.0) -> DetectedFace:
    """A face with dlib-style landmarks placed for a given yaw and pitch (NOSE_DEPTH's model)."""
    import math

    from consentmatch.quality import NOSE_DEPTH, NOSE_DROP

    eyes_y, spacing, centre = 160.0, 80.0, 200.0
    nose_x = centre + spacing * NOSE_DEPTH * math.tan(math.radians(yaw))
    nose_y = eyes_y + spacing * (NOSE_DROP + NOSE_DEPTH * math.tan(math.radians(pitch)))
    landmarks = ((260.0, eyes_y), (220.0, eyes_y), (140.0, eyes_y), (180.0, eyes_y), (nose_x, nose_y))
    return DetectedFace(box=box, encoding=np.zeros(128, dtype=np.float32), landmarks=landmarks)


def test_pose_is_read_from_the_landmarks() -> None:
    photo = _photo()
    frontal = assess(photo, _face())
    assert frontal.ok and frontal.measures["yaw"] == frontal.measures["pitch"] == frontal.measures["roll"] == 0
    turned = assess(photo, _face(yaw=40))
    assert turned.measures["yaw"] == pytest.approx(40, abs=0.2) and turned.reasons == (EXTREME_POSE,)
    assert assess(photo, _face(yaw=40), for_enrollment=False).ok  # probes may turn up to 45
    assert assess(photo, _face(pitch=-40)).reasons == (EXTREME_POSE,)
    no_landmarks = DetectedFace(box=Box(100, 300, 300, 100), encoding=np.zeros(128, dtype=np.float32))
    report = assess(photo, no_landmarks)
    assert report.ok and report.measures["yaw"] is None  # an encoder without landmarks: pose not judged


def test_cut_is_read_from_a_clipped_box() -> None:
    photo = _photo()
    assert assess(photo, _face(Box(100, 100, 300, 0))).measures["cut"] == 0.5
    assert assess(photo, _face(Box(0, 200, 200, 0))).measures["cut"] == 0.0  # square in a corner: whole
    assert CUT_BY_BORDER in assess(photo, _face(Box(100, 400, 300, 230))).reasons


def test_boxes_are_in_the_original_pixels_of_a_downscaled_decode() -> None:
    pixels = np.zeros((200, 200, 3), dtype=np.uint8)
    pixels[50:150, 50:150] = 200  # the only bright square, where the box points at half scale
    photo = Photo(name="big.jpg", pixels=pixels, sha256="0" * 64, scale=2.0)
    report = assess(photo, _face(Box(100, 300, 300, 100)))
    assert report.measures["brightness"] == 200.0 and report.measures["cut"] == 0.0


def test_flat_and_dark_crops() -> None:
    flat = Photo(name="flat.png", pixels=np.full((400, 400, 3), 10, np.uint8), sha256="0" * 64)
    assert assess(flat, _face()).reasons == (LOW_SHARPNESS, LOW_BRIGHTNESS)


def test_bars_are_one_table_stricter_upwards_and_laxer_for_probes() -> None:
    assert set(BARS) == {(level, use) for level in QUALITY_LEVELS for use in (True, False)}
    for use in (True, False):
        low, medium, high = (BARS[(level, use)] for level in QUALITY_LEVELS)
        for laxer, stricter in ((low, medium), (medium, high)):
            assert laxer.min_face_px <= stricter.min_face_px and laxer.min_sharpness <= stricter.min_sharpness
            assert laxer.min_brightness <= stricter.min_brightness and laxer.max_brightness >= stricter.max_brightness
            assert laxer.max_yaw >= stricter.max_yaw and laxer.max_cut >= stricter.max_cut
    for level in QUALITY_LEVELS:
        probe, template = BARS[(level, False)], BARS[(level, True)]
        assert probe.min_face_px < template.min_face_px and probe.min_sharpness < template.min_sharpness
        assert probe.max_yaw > template.max_yaw and probe.max_cut > template.max_cut


def test_levels_and_overrides() -> None:
    photo, face = _photo(), _face()
    with pytest.raises(InvalidArgumentError, match="not one of low, medium, high"):
        assess(photo, face, level="strict")
    assert assess(photo, face, level="high", min_face_px=300).reasons == (SMALL_BOUNDING_BOX,)
    assert assess(photo, face).to_dict()["reasons"] == []


def test_no_face_advice_names_the_floor_of_the_call() -> None:
    """A probe is looked at down to 40 px: telling its caller 80 px was advice for enrollment
    (issue 14: 11)."""
    with pytest.raises(FaceError, match="at least 40 px wide"):
        single_face([], "selfie.jpg", 40)
    with pytest.raises(FaceError, match="at least 80 px wide"):
        single_face([], "alice.jpg")


# -- the cut allowance per detector (issue 25) -------------------------------------------------


def _cut_face(detector: str | None) -> tuple[Photo, DetectedFace]:
    """A 100 px face whose box the photo's left border clips to 78 px: cut 0.22, as yunet reads
    tests/data/edge/obama_partial_face.jpg."""
    pixels = np.random.default_rng(3).integers(60, 200, size=(200, 200, 3), dtype=np.uint8)
    face = DetectedFace(box=Box(top=50, right=78, bottom=150, left=0), encoding=np.zeros(128, dtype=np.float32),
                        detector=detector)
    return Photo(name="cut.png", pixels=pixels, sha256="0" * 64), face


def test_a_yunet_box_gets_the_cut_allowance_its_reading_needs_and_hog_does_not() -> None:
    photo, yunet = _cut_face("yunet")
    _, hog = _cut_face("hog")
    assert assess(photo, yunet, level="low").measures["cut"] == pytest.approx(0.22)
    assert assess(photo, yunet, level="low").ok  # 0.20 + 0.05
    assert assess(photo, hog, level="low").reasons == (CUT_BY_BORDER,)  # HOG's bars as they were
    assert assess(photo, yunet, level="medium").reasons == (CUT_BY_BORDER,)  # 0.05 + 0.05
    assert CUT_BY_BORDER in assess(photo, yunet, level="high").reasons  # a bar of 0 stays 0


def test_a_face_cut_by_the_border_is_as_wide_as_its_uncut_side() -> None:
    photo, face = _cut_face("yunet")
    report = assess(photo, face, level="low", min_face_px=90)
    assert report.measures["face_px"] == 100.0 and SMALL_BOUNDING_BOX not in report.reasons
    inside = DetectedFace(box=Box(top=50, right=150, bottom=150, left=72), encoding=face.encoding, detector="yunet")
    assert assess(photo, inside, level="low", min_face_px=90).measures["face_px"] == 78.0  # not cut: its width
