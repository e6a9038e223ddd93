"""The bulk-import manifest: a CSV of `subject,photo,consent_ref,purposes,expires,jurisdiction`.

Optional columns: `evidence` (the signed release file, or its SHA-256), `signer`
(subject|guardian), `notice_version`, `email` (checked against opt-outs, kept as a keyed hash).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .consent import Consent, evidence_digest, parse_expiry
from .errors import ConsentMatchError, InvalidArgumentError, ManifestError
from .files import CSV_MAX_BYTES, FileKind, read_file

__all__ = ["COLUMNS", "REQUIRED_COLUMNS", "ManifestRow", "open_csv", "read_manifest", "resolve_path"]

COLUMNS = ("subject", "photo", "consent_ref", "purposes", "expires", "jurisdiction")
OPTIONAL_COLUMNS = ("evidence", "signer", "notice_version", "email")
REQUIRED_COLUMNS = ("subject", "photo", "consent_ref", "purposes")


@dataclass(frozen=True)
class ManifestRow:
    """One data row: ready to enroll, or with the `problem` that keeps it out."""

    line: int
    subject: str
    photo: str
    consent: Consent | None
    problem: str | None = None
    email: str | None = None


def open_csv(path: Path, kind: str, required: Sequence[str], header_hint: str) -> csv.DictReader[str]:
    """A CSV reader over a whole UTF-8 file, its header lower-cased and checked for `required`.

    Raises:
        ManifestError: the file cannot be read (or is not a regular file of at most
            CSV_MAX_BYTES), or lacks a required column (`kind` names it).
    """
    data = read_file(path, FileKind(kind, "the CSV file", CSV_MAX_BYTES, "split it into smaller files"), ManifestError)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ManifestError(f"{kind} '{path}' is not UTF-8 text: save it as CSV (UTF-8).") from None
    # The csv module's own line splitting: str.splitlines would also split on U+2028, \x1c...
    # inside a cell, and turn one row into two (a name pasted from the web enrolls as two people).
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [name.strip().lower() for name in reader.fieldnames or []]
    except csv.Error as exc:
        raise ManifestError(f"{kind} '{path}' has no valid CSV header ({exc}).") from None
    missing = [name for name in required if name not in header]
    if missing:
        raise ManifestError(f"{kind} '{path}' lacks the column(s) {', '.join(missing)}: its header must be {header_hint}.")
    reader.fieldnames = header
    return reader


def read_manifest(manifest: str | os.PathLike[str]) -> list[ManifestRow]:
    """Parse every row; rows that cannot be enrolled carry their problem instead of failing the file.

    Photo paths are absolute or relative to the manifest's folder; purposes are `;`-separated;
    `expires` (YYYY-MM-DD) and `jurisdiction` may be empty.

    Raises:
        ManifestError: the file cannot be read, or lacks a required column.
    """
    path = Path(manifest)
    reader = open_csv(path, "Manifest", REQUIRED_COLUMNS,
                      f"{','.join(COLUMNS)} (expires and jurisdiction may be empty)")
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
            photo = resolve_path(photo, folder)
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
                expires = _expiry(cells["expires"]) if cells.get("expires") else None
                consent = Consent(
                    reference=cells["consent_ref"],
                    purposes=tuple(p for p in cells.get("purposes", "").split(";") if p.strip()),
                    expires_at=expires,
                    jurisdiction=cells.get("jurisdiction") or None,
                    signer=cells.get("signer") or "subject",
                    evidence_sha256=_evidence(cells.get("evidence", ""), folder),
                    notice_version=cells.get("notice_version") or None,
                )
            except ConsentMatchError as exc:
                problem = " ".join(str(exc).splitlines())  # one line, even when a quoted cell spans several
        yield ManifestRow(
            line=number, subject=subject, photo=photo, consent=consent, problem=problem, email=cells.get("email") or None
        )


def _expiry(cell: str) -> datetime:
    try:
        return parse_expiry(cell)
    except OverflowError:  # a time zone pushing a date past the calendar's ends, e.g. 9999-12-31T23:00-05:00
        raise InvalidArgumentError(f"'{cell}' is not a usable date: write it as YYYY-MM-DD.") from None


def resolve_path(path: str, folder: Path) -> str:
    """`path` as written in a CSV: absolute, or relative to the CSV's `folder`."""
    return str(Path(path) if Path(path).is_absolute() else folder / path)


def _evidence(cell: str, folder: Path) -> str | None:
    """A release file (hashed here, never stored) or its SHA-256 as 64 hex digits."""
    if not cell:
        return None
    if re.fullmatch(r"[0-9a-fA-F]{64}", cell):
        return cell.lower()
    return evidence_digest(resolve_path(cell, folder))
