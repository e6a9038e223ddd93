"""Hostile and awkward photos: each is a one-line ImageError, never a crash."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consentmatch import ImageError
from consentmatch.images import load_photo

from .conftest import EXAMPLES


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size without the pixels: enough to trip size checks."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = b""
    for kind, body in ((b"IHDR", ihdr), (b"IDAT", zlib.compress(b"\x00" * 64))):
        chunks += struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunks


def _gif(frames: int) -> bytes:
    images = [Image.new("RGB", (40, 40), (i * 40, 0, 0)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


JPEG = (EXAMPLES / "probes" / "obama_small.jpg").read_bytes()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"hello, I am text\n" * 10, "not a supported image"),
        (np.random.default_rng(1).bytes(5000), "not a supported image"),
        (JPEG[: len(JPEG) // 2], "truncated or corrupt"),
        (JPEG[:200], "truncated or corrupt|not a supported image"),
        (_png_header(30_000, 30_000), "too many pixels"),
        (_png_header(8_000, 6_000), "over the 40 megapixel limit"),
        (_gif(3), "has 3 frames"),
        (b"%PDF-1.4\n" + b"0" * 500, "not a supported image"),
    ],
    ids=["empty", "text", "random", "truncated", "header-only", "bomb", "too-large", "animated", "pdf"],
)
def test_bad_bytes(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message) as caught:
        load_photo(data)
    assert "\n" not in str(caught.value)


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        load_photo(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        load_photo(tmp_path)
    mislabelled = tmp_path / "photo.jpg"
    mislabelled.write_text("not a photo")
    with pytest.raises(ImageError, match="'.*photo.jpg' is not a supported image"):
        load_photo(mislabelled)


def test_unreadable_file(tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    locked = tmp_path / "locked.jpg"
    locked.write_bytes(JPEG)
    locked.chmod(0)
    with pytest.raises(ImageError, match="permission denied"):
        load_photo(locked)


def test_modes_become_8bit_rgb() -> None:
    sixteen = Image.fromarray((np.arange(100, dtype=np.uint16).reshape(10, 10) * 600).astype(np.uint16))
    transparent = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    for image, expected in [(sixteen, None), (transparent, 255), (Image.new("L", (10, 10), 80), 80)]:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        photo = load_photo(buffer.getvalue())
        assert photo.pixels.dtype == np.uint8 and photo.pixels.shape == (10, 10, 3)
        if expected is not None:
            assert (photo.pixels == expected).all()
    photo = load_photo(_buffer(sixteen))
    assert photo.pixels.max() == round(99 * 600 / 257)  # scaled, not clipped to white


def _buffer(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
