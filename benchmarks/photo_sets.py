"""Make the photo sets issue 25 was measured on, from the project's own photos, outside the repository.

- `quality SET`: the 9 enrollment photos of examples/people made into small, cut and large
  faces: the whole photo scaled so the face is 50, 70, 90 or 120 px wide (`small/`); cropped
  so 0-40% of the face (its HOG box in the original) lies outside the photo on each side,
  with one face width of context elsewhere (`cut/`); the face filling 2,400-4,000 px frames
  and the whole photo at 4,600 px (`large/`). 225 photos, `manifest.csv` names each one's
  person, kind and parameter. `benchmarks/gates.py` measures the quality gates on them.
- `varied SET`: 60 photos whose long sides spread log-evenly over 300-4,600 px, from the 9
  example probes and the 4 photos of tests/data/edge (every third cropped to its central 80%
  first), JPEG quality 90, with `SET_expected.csv` beside the folder (each source's row of
  examples/expected.csv) for `benchmarks/photos.py --unknown SET --expected SET_expected.csv`.

    uv run python benchmarks/photo_sets.py quality /tmp/sets/quality
    uv run python benchmarks/photo_sets.py varied /tmp/sets/varied
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent


def quality_set(out: Path) -> int:
    from consentmatch.images import load_photo
    from consentmatch.settings import Settings
    from consentmatch.vision import default_encoder

    encoder = default_encoder(Settings.from_env().replace(detector="hog"))  # face_recognition's box
    rows: list[tuple[str, str, str, str]] = []
    for kind in ("small", "cut", "large"):
        (out / kind).mkdir(parents=True, exist_ok=True)
    for person in sorted((ROOT / "examples" / "people").iterdir()):
        for source in sorted(person.iterdir()):
            photo = load_photo(source)
            (face,) = encoder.encode(photo, 40)
            b = face.box
            image = Image.fromarray(photo.pixels)
            width, height = image.size
            w = b.right - b.left
            stem = f"{person.name}__{source.stem}"
            for px in (50, 70, 90, 120):
                name = f"small/{stem}__face{px}.jpg"
                s = px / w
                image.resize((max(1, round(width * s)), max(1, round(height * s))), Image.Resampling.LANCZOS).save(out / name, quality=92)
                rows.append((name, person.name, "small", str(px)))
            for share in (0.0, 0.1, 0.2, 0.3, 0.4):
                for side in ("left", "right", "top", "bottom") if share else ("left",):
                    left, top = max(0, b.left - w), max(0, b.top - w)
                    right, bottom = min(width, b.right + w), min(height, b.bottom + w)
                    if side == "left":
                        left = b.left + round(share * w)
                    elif side == "right":
                        right = b.right - round(share * w)
                    elif side == "top":
                        top = b.top + round(share * (b.bottom - b.top))
                    else:
                        bottom = b.bottom - round(share * (b.bottom - b.top))
                    name = f"cut/{stem}__{side}{round(share * 100):02d}.jpg"
                    image.crop((left, top, right, bottom)).save(out / name, quality=92)
                    rows.append((name, person.name, "cut", f"{side}{share}"))
            cx, cy = (b.left + b.right) / 2, (b.top + b.bottom) / 2
            for frame, fill in ((2400, 0.5), (3200, 0.35), (4000, 0.6)):
                half = w / fill / 2
                crop = image.crop((max(0, round(cx - half)), max(0, round(cy - half)),
                                   min(width, round(cx + half)), min(height, round(cy + half))))
                s = frame / max(crop.size)
                name = f"large/{stem}__fill{round(fill * 100)}_{frame}.jpg"
                crop.resize((round(crop.size[0] * s), round(crop.size[1] * s)), Image.Resampling.BICUBIC).save(out / name, quality=90)
                rows.append((name, person.name, "large", f"{frame}px fill {fill}"))
            s = 4600 / max(width, height)
            name = f"large/{stem}__whole4600.jpg"
            image.resize((round(width * s), round(height * s)), Image.Resampling.BICUBIC).save(out / name, quality=90)
            rows.append((name, person.name, "large", "whole 4600"))
    with open(out / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "person", "kind", "param"])
        writer.writerows(rows)
    return len(rows)


def varied_set(out: Path, count: int = 60, low: int = 300, high: int = 4600) -> int:
    out.mkdir(parents=True, exist_ok=True)
    with open(ROOT / "examples" / "expected.csv", newline="") as handle:
        expected = list(csv.DictReader(handle))
    sources = [(ROOT / ("examples" if row["file"].startswith("probes/") else "tests/data") / row["file"], row)
               for row in expected]
    sides = [round(low * (high / low) ** (i / (count - 1))) for i in range(count)]
    written = []
    for k in range(count):
        side = sides[(k * 7) % count]  # each source's copies spread over the range
        source, row = sources[k % len(sources)]
        with Image.open(source) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        if k % 3 == 2:
            w, h = image.size
            image = image.crop((round(w * 0.1), round(h * 0.1), round(w * 0.9), round(h * 0.9)))
        s = side / max(image.size)
        image = image.resize((max(1, round(image.size[0] * s)), max(1, round(image.size[1] * s))), Image.Resampling.LANCZOS)
        name = f"{k:02d}_{source.stem}_{side}.jpg"
        image.save(out / name, quality=90)
        written.append((name, row["faces"], row["subjects"]))
    with open(out.parent / f"{out.name}_expected.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "faces", "subjects"])
        writer.writerows(written)
    return len(written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("quality", "varied"))
    parser.add_argument("folder", type=Path, help="where the set goes (outside the repository)")
    args = parser.parse_args()
    made = quality_set(args.folder) if args.kind == "quality" else varied_set(args.folder)
    print(f"{made} photos in {args.folder}")


if __name__ == "__main__":
    main()
