"""Safe photo decoding: the one path by which bytes become pixels.

Every photo goes through `load_photo`: a format allow-list, our own size limits before any
pixel is decoded, EXIF orientation applied (phone photos are stored sideways), and every mode
Pillow can produce (RGBA, palette, grayscale, 16-bit) turned into 8-bit RGB.
"""

from __future__ import annotations

import hashlib
import io
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

# Register exactly the decoders of ALLOWED_FORMATS (Image.open's `formats` needs them loaded).
from PIL import (  # noqa: F401  isort: skip
    BmpImagePlugin,
    GifImagePlugin,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)

from .errors import ImageError
from .files import FileKind, read_file
from .jpeg import corruption
from .text import HIDDEN_CATEGORIES

__all__ = ["ALLOWED_FORMATS", "MAX_DECODE_PIXELS", "MAX_FILE_BYTES", "MAX_UPLOAD_NAME", "Photo", "PhotoInput", "Upload",
           "load_photo", "photo_bytes", "upload_name"]

#: A photo given by path or as the encoded file's bytes.
PhotoInput = Union[str, "os.PathLike[str]", bytes]

#: Pillow format names we decode; anything else is refused before decoding. (Phone JPEGs with a
#: preview frame open through JPEG as "MPO".)
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
#: Files larger than this are refused without being read.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Decoded pixels above this are refused; JPEGs are decoded at 1/2, 1/4 or 1/8 to fit instead.
MAX_DECODE_PIXELS = 40_000_000
#: Photos at least this long decode at half size (JPEG: libjpeg scales while it decodes, ~3x
#: cheaper, and the detector's resize shrinks 4x less; other formats: halved once decoded).
#: Nothing looked for is lost: in a photo this long no face under 80 px is looked for
#: (`vision.dlib.GUARANTEED_FACE_PX`), so the smallest is still 40 px, face_recognition's reach,
#: and the photo is still longer than the 1,600 px its CLI reads.
HALF_DECODE_PX = 3200

#: The most characters of an uploaded file's name kept to name the photo (the extension kept).
MAX_UPLOAD_NAME = 100

_HINT = "use a JPEG, PNG or WebP photo"
_PHOTO_FILE = FileKind("", "a photo file", MAX_FILE_BYTES, "downscale or re-compress it")


@dataclass(frozen=True)
class Photo:
    """A decoded, upright photo.

    `scale` is how many pixels of the original one decoded pixel stands for (1.0 unless a photo of
    HALF_DECODE_PX or more, or a huge JPEG, was decoded at reduced size), so boxes can be reported
    in the original's coordinates.
    """

    name: str
    pixels: NDArray[np.uint8]
    sha256: str
    scale: float = 1.0
    #: (latitude, longitude) from EXIF GPS, for the region policy only; never stored or logged.
    gps: tuple[float, float] | None = field(default=None, repr=False)


class Upload(bytes):
    """An uploaded photo: its encoded bytes, named by the file name it was sent under.

    A `bytes` (so it goes wherever bytes go) that results and messages name by `name` instead of
    ``<bytes>``: the HTTP service wraps each upload in one (`upload_name` makes the name safe).
    """

    name: str

    def __new__(cls, data: bytes, filename: str | None = None) -> Upload:
        made = super().__new__(cls, data)
        made.name = upload_name(filename)
        return made

    def __reduce__(self) -> tuple[type[Upload], tuple[bytes, str]]:
        # copied or sent to another process (a runner) with its name: bytes' own would drop it
        return (Upload, (bytes(self), self.name))


def upload_name(filename: str | None) -> str:
    """A client's file name made fit to print: the last path part only (a browser or curl may
    send a folder, and a hostile one ``../../``), no control, bidi or invisible character (`text.py`'s
    rule), at most MAX_UPLOAD_NAME characters with the extension kept; "upload" when nothing is left.
    """
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = " ".join("".join(c for c in base if unicodedata.category(c) not in HIDDEN_CATEGORIES).split())
    if len(name) > MAX_UPLOAD_NAME:
        stem, dot, extension = name.rpartition(".")
        keep = dot + extension if stem and len(extension) <= 10 else ""
        name = name[: MAX_UPLOAD_NAME - len(keep) - 3] + "..." + keep
    return name if name.strip(".") else "upload"


def photo_name(photo: PhotoInput) -> str:
    """How a photo is named in results and error messages: its path, an upload's file name, or
    ``<bytes>`` for bytes given without a name."""
    if isinstance(photo, Upload):
        return photo.name
    if isinstance(photo, bytes):
        return "<bytes>"
    return os.fspath(photo)


def load_photo(photo: PhotoInput, *, strict: bool = False) -> Photo:
    """Decode a photo to upright 8-bit RGB.

    `strict` (enrollment): also refuse a JPEG whose compressed data is corrupt but decodes,
    which libjpeg only warns about and Pillow passes on silently (`jpeg.py`). Probes stay
    lenient on purpose: a damaged probe costs one search, a damaged template every later one.

    Raises:
        ImageError: missing, unreadable, empty, unsupported, corrupt, multi-frame or too large.
    """
    name = photo_name(photo)
    data = photo_bytes(photo)
    if not data:
        raise ImageError(f"'{name}' is empty (0 bytes): {_HINT}.", name)
    try:
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            pixels, scale = _decode(image, name)
            gps = _gps(image)
            damage = corruption(data, MAX_DECODE_PIXELS) if strict and image.format in ("JPEG", "MPO") else None
        if damage is not None:
            raise ImageError(
                f"'{name}' is damaged: its JPEG data is corrupt ({damage}), so parts of the face would be decoder "
                "garbage: re-export the photo from the original.",
                name,
            )
    except UnidentifiedImageError:
        raise ImageError(f"'{name}' is not a supported image: {_HINT}.", name) from None
    except Image.DecompressionBombError:
        raise ImageError(
            f"'{name}' has too many pixels to decode safely: downscale it below "
            f"{MAX_DECODE_PIXELS // 1_000_000} megapixels.",
            name,
        ) from None
    except ImageError:
        raise
    except Exception as exc:
        # Pillow reports truncated and corrupt data with OSError, ValueError, SyntaxError and
        # EOFError, but hostile files also reach TypeError, IndexError and struct.error in its
        # plugins (tests/test_fuzz.py): whatever the codec raises, the photo is unreadable.
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ImageError(f"'{name}' is truncated or corrupt ({detail}): re-export the photo.", name) from None
    return Photo(name=name, pixels=pixels, sha256=hashlib.sha256(data).hexdigest(), scale=scale, gps=gps)


def photo_bytes(photo: PhotoInput) -> bytes:
    """A photo's encoded bytes as given (read under the size limit), not decoded: what a search
    request holds until it is decided."""
    name = photo_name(photo)
    if isinstance(photo, bytes):
        return photo
    if "://" in name[:12]:
        raise ImageError(f"'{name}' is a URL: photos are never fetched from the web; use a file you or the subject supplied.", name)
    return _read(Path(name), name)


def _read(path: Path, name: str) -> bytes:
    return read_file(path, _PHOTO_FILE, lambda message: ImageError(message, name))


def _decode(image: Image.Image, name: str) -> tuple[NDArray[np.uint8], float]:
    frames = getattr(image, "n_frames", 1)
    if frames > 1 and image.format != "MPO":  # MPO: a phone JPEG with a preview; frame 0 is the photo
        raise ImageError(f"'{name}' has {frames} frames (animation or multi-page): export one still photo.", name)
    width, height = image.size
    jpeg = image.format in ("JPEG", "MPO")
    if width * height > MAX_DECODE_PIXELS and not jpeg:
        raise ImageError(
            f"'{name}' is {width}x{height} pixels, over the {MAX_DECODE_PIXELS // 1_000_000} megapixel "
            "limit: downscale it.",
            name,
        )
    reduce = 2 if jpeg and max(width, height) >= HALF_DECODE_PX else 1
    # JPEG decodes at 1/2, 1/4 or 1/8 for free: ask for the largest size under the limit.
    while (width // reduce) * (height // reduce) > MAX_DECODE_PIXELS and reduce < 8:
        reduce *= 2
    scale = 1.0
    if reduce > 1:
        image.draft("RGB", (width // reduce, height // reduce))
        if image.size[0] * image.size[1] > MAX_DECODE_PIXELS:
            raise ImageError(f"'{name}' is {width}x{height} pixels, too large even at 1/8 size: downscale it.", name)
        scale = width / image.size[0]
    image.load()
    if not jpeg and max(width, height) >= HALF_DECODE_PX:
        # Other formats cannot decode at reduced size: halve right after decoding, before any
        # copy, by the JPEG rule (nothing looked for is lost). Detection and encoding then hold a
        # quarter of the pixels: a legal 40-megapixel PNG costs ~0.3 GB at its peak, not ~0.7.
        try:
            image = image.reduce(2)
            scale = width / image.size[0]
        except (ValueError, NotImplementedError):  # a mode reduce() lacks (palette, 1-bit): kept whole
            pass
    try:
        # In place: a copy of a 40-megapixel photo costs 120 MB more at the peak.
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # a broken EXIF block must not cost the photo; keep it as stored
        pass
    return _to_rgb(image), scale


def _gps(image: Image.Image) -> tuple[float, float] | None:
    """EXIF GPS as signed decimal degrees, or None when absent or malformed."""
    try:
        tags = image.getexif().get_ifd(0x8825)  # GPSInfo
        if not tags or 2 not in tags or 4 not in tags:
            return None

        def degrees(value: Any, ref: Any, negative: str) -> float:
            d, m, s = (float(part) for part in value)
            sign = -1.0 if str(ref).strip().upper().startswith(negative) else 1.0
            return sign * (d + m / 60 + s / 3600)

        latitude, longitude = degrees(tags[2], tags.get(1, "N"), "S"), degrees(tags[4], tags.get(3, "E"), "W")
    except Exception:  # EXIF is untrusted input: a malformed GPS block means no GPS
        return None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        return None
    return latitude, longitude


def _to_rgb(image: Image.Image) -> NDArray[np.uint8]:
    """8-bit RGB from any mode; transparency is composited on white, 16-bit is scaled, not clipped."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        values = np.asarray(image).astype(np.float64)
        top = values.max(initial=0.0)
        if image.mode == "F":
            gray = values / top * 255.0 if top > 0 else values
        else:
            gray = values / 257.0 if top > 255 else values  # 16-bit samples to 8-bit
        plane = np.clip(gray, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.stack([plane] * 3, axis=-1))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":  # converting an RGB photo would copy it for nothing
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def annotate(photo: PhotoInput, labels: list[tuple[tuple[int, int, int, int], str]], target: Path) -> None:
    """Write a copy of the upright photo with each (top, right, bottom, left) box and its label
    drawn, for a person to review a match; JPEG for a .jpg/.jpeg target, else PNG.

    Boxes are in the original photo's pixels, as results give them (scaled back here when a
    huge JPEG was decoded at reduced size).
    """
    from PIL import ImageDraw

    decoded = load_photo(photo)
    image = Image.fromarray(decoded.pixels)
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 400))
    for (top, right, bottom, left), label in labels:
        box = [round(v / decoded.scale) for v in (left, top, right, bottom)]
        draw.rectangle(box, outline=(255, 215, 0), width=width)
        text_top = max(0, box[1] - 14)
        draw.rectangle(draw.textbbox((box[0], text_top), label), fill=(0, 0, 0))
        draw.text((box[0], text_top), label, fill=(255, 215, 0))
    image.save(target, format="JPEG" if target.suffix.lower() in (".jpg", ".jpeg") else "PNG")
