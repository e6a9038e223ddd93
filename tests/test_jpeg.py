"""A visibly corrupt JPEG is not enrolled (issue 12 G).

libjpeg only warns about corrupt entropy-coded data and Pillow drops the warning, so a photo
with flipped bits decoded to garbage blocks and was enrolled. Enrollment now walks the
compressed data (consentmatch/jpeg.py); probes stay lenient on purpose.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image

from consentmatch import Consent, Gallery
from consentmatch.errors import ImageError
from consentmatch.images import load_photo
from consentmatch.jpeg import MAX_SCANS, corruption

from consentmatch.vision.types import DetectedFace
from consentmatch.images import Photo
from consentmatch.results import Box

from .conftest import DATA, EXAMPLES, fake_encoding

CLEAN = EXAMPLES / "people" / "obama" / "obama.jpg"
JPEGS = sorted([*EXAMPLES.rglob("*.jp*g"), *DATA.rglob("*.jp*g")])


def first_scan(data: bytes) -> int:
    """Where the first scan header (SOS) starts, walking the segments (an EXIF thumbnail has its own)."""
    at = 2
    while data[at + 1] != 0xDA:
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return at


def flipped(path: Path, flips: int = 8, seed: int = 7) -> bytes:
    """The photo with `flips` bits flipped in the middle of its entropy-coded data (after the
    first scan header, never in a marker or a stuffed byte)."""
    data = bytearray(path.read_bytes())
    scan = first_scan(data)
    start = scan + 2 + int.from_bytes(data[scan + 2 : scan + 4], "big")
    end = data.rindex(b"\xff\xd9")
    rng = random.Random(seed)
    done = 0
    while done < flips:
        at = rng.randrange(start + (end - start) // 5, end - (end - start) // 5)
        if data[at] in (0x00, 0xFF) or data[at - 1] == 0xFF or data[at + 1] == 0x00:
            continue
        changed = data[at] ^ (1 << rng.randrange(8))
        if changed != 0xFF:
            data[at], done = changed, done + 1
    return bytes(data)


def test_every_example_jpeg_is_clean() -> None:
    """Baseline, progressive (rose_leslie/img1.jpg, obama_and_biden.jpg), 4:2:0 and 4:4:4 alike."""
    assert len(JPEGS) >= 15
    assert {path.name: corruption(path.read_bytes()) for path in JPEGS} == {path.name: None for path in JPEGS}


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("options", [{}, {"subsampling": 0}, {"optimize": True}, {"restart_marker_blocks": 3}])
def test_pillow_written_jpegs_are_clean(progressive: bool, options: dict[str, object]) -> None:
    for mode in ("RGB", "L", "CMYK"):
        image = Image.open(CLEAN).convert(mode).resize((301, 173))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90, progressive=progressive, **options)
        assert corruption(buffer.getvalue()) is None, (mode, options)


@pytest.mark.parametrize("path", [CLEAN, EXAMPLES / "people" / "rose_leslie" / "img1.jpg"], ids=["baseline", "progressive"])
def test_flipped_bits_in_the_entropy_data_are_found(path: Path) -> None:
    damaged = flipped(path)
    Image.open(io.BytesIO(damaged)).load()  # Pillow decodes it without a word
    problem = corruption(damaged)
    assert problem is not None and problem.startswith("at byte ")


class OneFace:
    """Finds one large face in any photo: the enrollment goes as far as the photo lets it."""

    def encode(self, photo: Photo, min_face_px: int) -> list[DetectedFace]:
        return [DetectedFace(box=Box(10, 310, 310, 10), encoding=fake_encoding(1))]


def test_enrollment_refuses_a_corrupt_jpeg_that_decodes(tmp_path: Path) -> None:
    damaged = tmp_path / "obama-damaged.jpg"
    damaged.write_bytes(flipped(CLEAN))
    with Gallery(tmp_path / "g.db", encoder=OneFace()) as gallery:
        with pytest.raises(ImageError) as caught:
            gallery.enroll("obama", [damaged], Consent("R1", ["door"]))
        assert gallery.subjects() == []
        assert gallery.enroll("obama", [CLEAN], Consent("R1", ["door"])).templates_added == 1
    message = str(caught.value)
    assert message.startswith(f"'{damaged}' is damaged: its JPEG data is corrupt (at byte ")
    assert message.endswith("re-export the photo from the original.") and "\n" not in message
    assert caught.value.photo == str(damaged)


def test_probes_stay_lenient_and_clean_photos_pass_the_strict_check(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.jpg"
    damaged.write_bytes(flipped(CLEAN))
    assert load_photo(damaged).pixels.shape[2] == 3  # a probe: decoded as libjpeg does
    with pytest.raises(ImageError, match="is damaged"):
        load_photo(damaged, strict=True)
    assert load_photo(CLEAN, strict=True).sha256 == load_photo(CLEAN).sha256


def test_more_scans_than_a_photo_has_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file built to make the walk loop: a progressive photo has about 10 scans, MAX_SCANS is 100."""
    progressive = (EXAMPLES / "probes" / "obama_and_biden.jpg").read_bytes()
    assert corruption(progressive) is None
    monkeypatch.setattr("consentmatch.jpeg.MAX_SCANS", 3)
    assert (corruption(progressive) or "").endswith("more than 3 scans")
    assert MAX_SCANS == 100


def test_hostile_bytes_never_raise() -> None:
    rng = random.Random(5)
    seed = (EXAMPLES / "probes" / "obama_small.jpg").read_bytes()
    for _ in range(300):
        data = bytearray(seed)
        for _ in range(rng.randrange(1, 30)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        corruption(bytes(data[: rng.randrange(2, len(data) + 1)]))
