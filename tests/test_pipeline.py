"""The real models on real photos: every row of expected.csv, and what face_recognition misses."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consentmatch import Gallery, InvalidArgumentError
from consentmatch.images import load_photo

from .conftest import DATA, EXAMPLES, PURPOSE

ROWS = list(csv.DictReader((EXAMPLES / "expected.csv").open()))


def _probe(file: str) -> Path:
    return EXAMPLES / file if file.startswith("probes/") else DATA / file


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_expected_subjects_are_found(real_gallery: Gallery, row: dict[str, str]) -> None:
    result = real_gallery.match(_probe(row["file"]), purpose=PURPOSE)
    assert len(result.faces) == int(row["faces"])
    assert sorted(f.subject for f in result.faces if f.subject) == sorted(row["subjects"].split())
    for face in result.faces:
        if face.subject is not None:
            assert face.distance == face.candidates[0].distance <= 0.6
        else:
            assert all(c.distance > 0.6 for c in face.candidates)


def test_encodings_equal_face_recognition_for_the_same_box(real_gallery: Gallery) -> None:
    import face_recognition

    from consentmatch.vision import default_encoder

    path = EXAMPLES / "people" / "obama" / "obama2.jpg"
    (ours,) = default_encoder().encode(load_photo(path), 80)
    image = face_recognition.load_image_file(path)
    (theirs,) = face_recognition.face_encodings(image, [tuple(ours.box.to_list())])
    assert np.abs(ours.encoding - theirs).max() < 1e-5


def test_candidates_list_each_subject_once_sorted(real_gallery: Gallery) -> None:
    result = real_gallery.match(EXAMPLES / "probes" / "obama1.jpg", purpose=PURPOSE, top_k=5)
    (face,) = result.faces
    names = [c.subject for c in face.candidates]
    assert len(names) == len(set(names)) == 5  # five subjects enrolled, obama and biden with 2 photos
    distances = [c.distance for c in face.candidates]
    assert distances == sorted(distances)


def _jpeg_bytes(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **kwargs)
    return buffer.getvalue()


def test_exif_orientation_is_applied(real_gallery: Gallery) -> None:
    upright = Image.open(EXAMPLES / "probes" / "obama1.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    sideways = _jpeg_bytes(upright.rotate(90, expand=True), exif=exif)
    result = real_gallery.match(sideways, purpose=PURPOSE)
    assert [f.subject for f in result.faces] == ["obama"]
    box = result.faces[0].box
    assert box.bottom <= upright.height and box.right <= upright.width  # upright coordinates


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "I;16"])
def test_png_modes_are_accepted(real_gallery: Gallery, mode: str) -> None:
    image = Image.open(EXAMPLES / "probes" / "obama1.jpg").convert("RGB")
    if mode == "I;16":
        gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        converted = Image.fromarray(gray)
        assert converted.mode == "I;16"
    else:
        converted = image.convert(mode)
    buffer = io.BytesIO()
    converted.save(buffer, "PNG")
    result = real_gallery.match(buffer.getvalue(), purpose=PURPOSE)
    assert [f.subject for f in result.faces] == ["obama"]


def test_huge_jpeg_is_decoded_reduced_and_boxes_are_in_original_coordinates(real_gallery: Gallery) -> None:
    small = Image.open(EXAMPLES / "probes" / "obama1.jpg").convert("RGB")  # 1480 x 832
    factor = 5  # 8880 x 4992 = 44 MP: over the 40 MP decode limit, so decoded at 1/2
    big = small.resize((int(small.width * factor * 1.2), int(small.height * factor * 1.2)))
    photo = _jpeg_bytes(big)
    decoded = load_photo(photo)
    assert decoded.scale == 2.0 and decoded.pixels.shape[1] == big.width // 2
    result = real_gallery.match(photo, purpose=PURPOSE)
    (face,) = result.faces
    assert face.subject == "obama"
    reference = real_gallery.match(EXAMPLES / "probes" / "obama1.jpg", purpose=PURPOSE).faces[0].box
    zoom = factor * 1.2
    width = reference.width * zoom  # HOG boxes shift a little with scale: compare within 15%
    assert abs((face.box.left + face.box.right) / 2 - (reference.left + reference.right) / 2 * zoom) < 0.15 * width
    assert abs((face.box.top + face.box.bottom) / 2 - (reference.top + reference.bottom) / 2 * zoom) < 0.15 * width
    assert abs(face.box.width - width) < 0.15 * width


def test_small_face_is_refused_at_enrollment_with_its_width(tmp_path: Path) -> None:
    from consentmatch import Consent, FaceTooSmallError

    shrunk = Image.open(EXAMPLES / "people" / "obama" / "obama.jpg").convert("RGB").reduce(4)  # face ~65 px
    path = tmp_path / "tiny_obama.jpg"
    shrunk.save(path)
    with Gallery(tmp_path / "g.db") as gallery, pytest.raises(FaceTooSmallError, match=r"tiny_obama.jpg.*px wide, below the 80 px"):
        gallery.enroll("obama", [path], Consent("R", [PURPOSE]))
    assert not (tmp_path / "g.db").exists()


def test_verify_real_photos(real_gallery: Gallery) -> None:
    same = real_gallery.verify("obama", EXAMPLES / "probes" / "obama1.jpg", purpose=PURPOSE)
    other = real_gallery.verify("biden", EXAMPLES / "probes" / "obama1.jpg", purpose=PURPOSE)
    assert same.match and same.distance < 0.6
    assert not other.match and other.distance is None  # beyond the tolerance: no measure (issue 24)


def test_an_80px_face_is_found_in_a_big_photo(real_gallery: Gallery) -> None:
    # Detection runs on a reduced copy of big photos; a face of the enrollment minimum must survive.
    probe = Image.open(EXAMPLES / "probes" / "obama1.jpg").convert("RGB")  # face ~385 px wide
    factor = 84 / 385
    small = probe.resize((round(probe.width * factor), round(probe.height * factor)))
    canvas = Image.new("RGB", (4800, 3200), (120, 120, 120))
    canvas.paste(small, (3000, 2000))
    result = real_gallery.match(_jpeg_bytes(canvas), purpose=PURPOSE)
    (face,) = result.faces
    assert face.subject == "obama"
    assert 3000 <= face.box.left and 60 <= face.box.width <= 120


def test_a_big_png_is_halved_once_decoded_and_keeps_its_80px_face(real_gallery: Gallery) -> None:
    # Like a big JPEG (HALF_DECODE_PX): halved right after decoding, so a 40-megapixel PNG holds a
    # quarter of the memory; the face of the enrollment minimum is still found, boxed in the original.
    probe = Image.open(EXAMPLES / "probes" / "obama1.jpg").convert("RGB")
    factor = 84 / 385
    small = probe.resize((round(probe.width * factor), round(probe.height * factor)))
    canvas = Image.new("RGB", (4800, 3200), (120, 120, 120))
    canvas.paste(small, (3000, 2000))
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG", compress_level=1)
    decoded = load_photo(buffer.getvalue())
    assert decoded.scale == 2.0 and decoded.pixels.shape[:2] == (1600, 2400)
    (face,) = real_gallery.match(buffer.getvalue(), purpose=PURPOSE).faces
    assert face.subject == "obama"
    assert 3000 <= face.box.left and 60 <= face.box.width <= 120

def test_detection_scale() -> None:
    from consentmatch.vision.dlib import detection_scale

    assert detection_scale(320, 240, 40) == pytest.approx(1.6)  # small probes are upscaled
    assert detection_scale(1600, 1200, 80) == pytest.approx(0.8)  # enrollment: 80 px faces still found
    assert detection_scale(6000, 4000, 40) == pytest.approx(0.8)  # never so small that 80 px faces are lost


def test_min_face_px_trades_reach_for_speed(real_gallery: Gallery) -> None:
    probe = EXAMPLES / "probes" / "obama-240p.jpg"  # its face is ~60 px wide
    (face,) = real_gallery.match(probe, purpose=PURPOSE).faces
    assert face.subject == "obama" and face.box.width < 80
    assert real_gallery.match(probe, purpose=PURPOSE, min_face_px=80).faces == ()
    (wide,) = next(real_gallery.match_many([EXAMPLES / "probes" / "obama1.jpg"], purpose=PURPOSE, min_face_px=200)).faces
    assert wide.subject == "obama"  # a ~385 px face is still found when only faces of 200 px and more are looked for
    assert real_gallery.verify("obama", EXAMPLES / "probes" / "obama1.jpg", purpose=PURPOSE, min_face_px=200).match
    with pytest.raises(InvalidArgumentError, match="min_face_px"):
        real_gallery.match(probe, purpose=PURPOSE, min_face_px=0)
