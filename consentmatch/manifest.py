"""The bulk-import manifest: a CSV of `subject,photo,consent_ref,purposes,expires,jurisdiction`."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .consent import Consent, parse_expiry
from .errors import ConsentMatchError, ManifestError

__all__ = ["COLUMNS", "REQUIRED_COLUMNS", "ManifestRow", "read_manifest"]

COLUMNS = ("subject", "photo", "consent_ref", "purposes", "expires", "jurisdiction")
REQUIRED_COLUMNS = ("subject", "photo", "consent_ref", "purposes")


@dataclass(frozen=True)
class ManifestRow:
    """One data row: ready to enroll, or with the `problem` that keeps it out."""

    line: int
    subject: str
    photo: str
    consent: Consent | None
    problem: str | None = None


def read_manifest(manifest: str | os.PathLike[str]) -> list[ManifestRow]:
    """Parse every row; rows that cannot be enrolled carry their problem instead of failing the file.

    Photo paths are absolute or relative to the manifest's folder; purposes are `;`-separated;
    `expires` (YYYY-MM-DD) and `jurisdiction` may be empty.

    Raises:
        ManifestError: the file cannot be read, or lacks a required column.
    """
    path = Path(manifest)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"Manifest '{path}' does not exist: check the path.") from None
    except IsADirectoryError:
        raise ManifestError(f"Manifest '{path}' is a directory: name the CSV file.") from None
    except UnicodeDecodeError:
        raise ManifestError(f"Manifest '{path}' is not UTF-8 text: save it as CSV (UTF-8).") from None
    except OSError as exc:
        raise ManifestError(f"Manifest '{path}' cannot be read ({exc.strerror or exc}).") from None
    reader = csv.DictReader(text.splitlines())
    header = [name.strip().lower() for name in reader.fieldnames or []]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise ManifestError(
            f"Manifest '{path}' lacks the column(s) {', '.join(missing)}: its header must be "
            f"{','.join(COLUMNS)} (expires and jurisdiction may be empty)."
        )
    reader.fieldnames = header
    try:
        return list(_rows(reader, path.parent))
    except csv.Error as exc:
        raise ManifestError(f"Manifest '{path}' is not valid CSV ({exc}).") from None


def _rows(reader: csv.DictReader[str], folder: Path) -> Iterator[ManifestRow]:
    for record in reader:
        number = reader.line_num
        cells = {key: (value or "").strip() for key, value in record.items() if isinstance(key, str)}
        subject, photo = cells.get("subject", ""), cells.get("photo", "")
        if photo:
            photo = str(Path(photo) if Path(photo).is_absolute() else folder / photo)
        problem = None
        consent = None
        if not subject:
            problem = "empty subject: every row names the person it enrolls"
        elif not photo:
            problem = "empty photo: every row names one photo file"
        elif not cells.get("consent_ref"):
            problem = f"no consent_ref for '{subject}': enrolling needs the reference of a signed consent"
        else:
            try:
                expires = parse_expiry(cells["expires"]) if cells.get("expires") else None
                consent = Consent(
                    reference=cells["consent_ref"],
                    purposes=tuple(p for p in cells.get("purposes", "").split(";") if p.strip()),
                    expires_at=expires,
                    jurisdiction=cells.get("jurisdiction") or None,
                )
            except ConsentMatchError as exc:
                problem = str(exc)
        yield ManifestRow(line=number, subject=subject, photo=photo, consent=consent, problem=problem)
