"""Integrity of an SQLite gallery against a writer of the file who lacks the keys.

Each template's associated data binds it to the gallery, its row id, and its subject's id,
name and key id; each subject and consent row carries an HMAC-SHA256 (`mac`) under the
gallery's MAC key (storage/keyring.py) over all its columns (a consent's: and its sorted
purposes). Rows are checked where they are read for an answer: the subjects a search returns,
with the consents that made them searchable and the template they were found by; listings.
A failing row is a `TamperingError`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..crypto import unseal
from ..errors import TamperingError
from .dialect import SQLITE, Dialect
from .keyring import KeyRing

__all__ = ["CONSENT_FIELDS", "SUBJECT_FIELDS", "Integrity", "consent_content", "subject_content"]

# What a row's MAC covers: every column but the MAC itself; a consent's purposes too (sorted in
# Python: the order json_group_array sees is SQLite's choice).
SUBJECT_FIELDS = "s.id, s.name, s.created_at, s.key_id, s.last_interaction_at, s.destroy_by, s.destroy_rule"
_CONSENT_COLUMNS = (
    "c.id, c.subject_id, c.reference, c.granted_at, c.expires_at, c.jurisdiction, c.signer, c.evidence_sha256, "
    "c.notice_version, c.email_hash, c.revoked_at, "
)
CONSENT_FIELDS = _CONSENT_COLUMNS + SQLITE.purposes_json  # SQLite's; a transaction's own: `consent_fields`


def subject_content(row: Sequence[Any]) -> list[Any]:
    """What a subject row's MAC covers, from a row that starts with SUBJECT_FIELDS."""
    return ["subject", *row[:7]]


def consent_content(row: Sequence[Any]) -> list[Any]:
    """What a consent row's MAC covers, from a row that starts with CONSENT_FIELDS."""
    return ["consent", *row[:11], sorted(json.loads(row[11]))]


class Integrity:
    """The binding and MAC half of an SQLite transaction (`SqliteTransaction` inherits it)."""

    conn: sqlite3.Connection
    keys: KeyRing
    path: Path
    dialect: Dialect

    @property
    def consent_fields(self) -> str:
        """The consent columns (and purposes) its MAC covers, in this engine's SQL."""
        return _CONSENT_COLUMNS + self.dialect.purposes_json

    def subject_names(self, subject_ids: Sequence[int]) -> dict[int, str]:
        raise NotImplementedError

    def all_templates(self) -> Any:
        raise NotImplementedError

    def optout_salt(self) -> str | None:
        raise NotImplementedError

    def api_keys(self) -> Any:
        raise NotImplementedError

    def search_requests(self, *, request_id: str | None = None, status: str | None = None) -> Any:
        raise NotImplementedError

    def _binding(self, subject_id: int, name: str, key_id: str) -> bytes:
        """The associated data of a subject's templates, less the template id that ends it: a
        template moved to another row or subject, or its subject renamed, no longer unseals."""
        canonical = json.dumps(["template", self.keys.gallery_id, subject_id, name, key_id],
                               ensure_ascii=False, separators=(",", ":"))
        return canonical.encode() + b"#"

    def _mac(self, content: list[Any]) -> str:
        canonical = json.dumps([self.keys.gallery_id, *content], ensure_ascii=False, separators=(",", ":"))
        return hmac.new(self.keys.mac_key(), canonical.encode(), hashlib.sha256).hexdigest()

    def _holds(self, content: list[Any], mac: str | None) -> bool:
        return mac is not None and hmac.compare_digest(self._mac(content), str(mac))

    def _tampered(self, what: str) -> TamperingError:
        return TamperingError(
            f"Gallery '{self.path}': {what} fails its integrity check (edited outside consentmatch): "
            "restore the gallery from a backup.",
            row=what,
        )

    def seal_subject(self, subject_id: int) -> None:
        """Write the MAC of a subject row as it is now (nothing when the row is gone)."""
        row = self.conn.execute(f"SELECT {SUBJECT_FIELDS} FROM subjects s WHERE s.id = ?", (subject_id,)).fetchone()
        if row is not None:
            self.conn.execute("UPDATE subjects SET mac = ? WHERE id = ?", (self._mac(subject_content(row)), subject_id))

    def seal_consent(self, consent_id: int) -> None:
        """Write the MAC of a consent row and its purposes as they are now."""
        row = self.conn.execute(f"SELECT {self.consent_fields} FROM consents c WHERE c.id = ?", (consent_id,)).fetchone()
        if row is not None:
            self.conn.execute("UPDATE consents SET mac = ? WHERE id = ?", (self._mac(consent_content(row)), consent_id))

    def _intact_rows(self, subject_id: int
    ) -> tuple[set[tuple[str, int]], set[tuple[str, int]], str | None]:
        """A subject's row and its consent rows: (those whose MAC holds, all of them, the first that fails)."""
        intact: set[tuple[str, int]] = set()
        every: set[tuple[str, int]] = set()
        problem = None
        row = self.conn.execute(f"SELECT {SUBJECT_FIELDS}, s.mac FROM subjects s WHERE s.id = ?", (subject_id,)).fetchone()
        if row is not None:
            every.add(("subject", subject_id))
            if self._holds(subject_content(row), row[7]):
                intact.add(("subject", subject_id))
            else:
                problem = f"the subject '{row[1]}'"
        for row in self.conn.execute(f"SELECT {self.consent_fields}, c.mac FROM consents c WHERE c.subject_id = ?", (subject_id,)):
            every.add(("consent", int(row[0])))
            if self._holds(consent_content(row), row[12]):
                intact.add(("consent", int(row[0])))
            elif problem is None:
                problem = f"the consent record '{row[2]}'"
        return intact, every, problem

    def check_subject(self, subject_id: int) -> None:
        """Refuse a subject whose row or any of whose consents (with their purposes) was edited.

        Raises:
            TamperingError: a MAC does not hold.
        """
        _, _, problem = self._intact_rows(subject_id)
        if problem is not None:
            raise self._tampered(problem)

    def check_found(self, found: Iterable[tuple[int, int]]) -> None:
        """Refuse a search's answer unless every subject in it, with each template it was found by
        (subject id, template id), is as consentmatch wrote it: the subject's row and consents
        hold their MACs (so the SQL that made it searchable read true rows), and the template
        unseals as this subject's. Only what a search returns is checked, never the whole gallery.

        Raises:
            TamperingError: any of it does not hold.
        """
        checked: set[int] = set()
        for subject_id, template_id in found:
            if subject_id not in checked:
                self.check_subject(subject_id)
                checked.add(subject_id)
            row = self.conn.execute(
                """SELECT t.embedding, s.name, s.key_id FROM templates t JOIN subjects s ON s.id = t.subject_id
                   WHERE t.id = ? AND t.subject_id = ?""",
                (template_id, subject_id),
            ).fetchone()
            if row is None:
                name = self.subject_names([subject_id]).get(subject_id, "?")
                raise self._tampered(f"the template {template_id} of subject '{name}'")
            blob, name, key_id = row
            dek = self.keys.data_key(str(key_id)) if key_id is not None else None
            if dek is None:  # the subject is being erased: its key goes first (see services/erasure.erase)
                continue
            aad = self._binding(subject_id, str(name), str(key_id)) + str(template_id).encode()
            if unseal(dek, bytes(blob), aad) is None:
                raise self._tampered(f"the templates of subject '{name}'")

    @contextmanager
    def renewing(self, subject_id: int, *, strict: bool) -> Iterator[None]:
        """Renew the MACs of a subject's row and consents around a write that changes them.

        Only rows whose MAC held before, and rows the write adds, are renewed: a row edited
        outside consentmatch is never vouched for. `strict`: refuse the write instead (an
        erasure is never refused; the rows it leaves edited keep failing their check).

        Raises:
            TamperingError: `strict`, and a row of the subject fails its check.
        """
        intact, before, problem = self._intact_rows(subject_id)
        if strict and problem is not None:
            raise self._tampered(problem)
        yield
        if ("subject", subject_id) in intact:
            self.seal_subject(subject_id)
        for (consent_id,) in self.conn.execute("SELECT id FROM consents WHERE subject_id = ?", (subject_id,)).fetchall():
            if ("consent", consent_id) in intact or ("consent", consent_id) not in before:
                self.seal_consent(int(consent_id))

    def check_all(self) -> str | None:
        """Check every subject, consent, template, API key and search request; the first that fails, or None."""
        for row in self.conn.execute(f"SELECT {SUBJECT_FIELDS}, s.mac FROM subjects s ORDER BY s.id"):
            if not self._holds(subject_content(row), row[7]):
                return f"the subject '{row[1]}'"
        for row in self.conn.execute(f"SELECT {self.consent_fields}, c.mac FROM consents c ORDER BY c.id"):
            if not self._holds(consent_content(row), row[12]):
                return f"the consent record '{row[2]}'"
        try:
            self.all_templates()
            self.api_keys()
            self.search_requests()
        except TamperingError as exc:
            return exc.row
        return None

    def email_hashes(self, email: str) -> list[str]:
        """An e-mail's hashes: the stored one first, HMAC-SHA256 under a key derived from the MAC
        key (so a copy of the file alone cannot test addresses against it); then, while the file
        still holds hashes made under its own salt (schema 4 and older), that one, to match them."""
        address = email.strip().lower().encode()
        key = hmac.new(self.keys.mac_key(), b"consentmatch e-mail hash", hashlib.sha256).digest()
        hashes = [hmac.new(key, address, hashlib.sha256).hexdigest()]
        salt = self.optout_salt()
        if salt is not None:
            hashes.append(hmac.new(bytes.fromhex(salt), address, hashlib.sha256).hexdigest())
        return hashes
