"""SQLite: the gallery's source of truth. Schema, transactions, and every query.

One connection per `Store`, shared by threads under a lock: SQLite's own locking then keeps
several processes safe (WAL: readers never block the writer). Every write bumps `generation`
in the same transaction, so an index built from the store knows when it is stale.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .consent import Consent
from .encoder import DIMENSIONS
from .errors import ConsentError, GalleryNotFoundError, StorageError
from .migrations import APPLICATION_ID, MIGRATIONS
from .results import Box, ConsentSummary, SubjectInfo

__all__ = ["Searchable", "Store"]

_EMBEDDING = np.dtype("<f4")


def _ts(moment: datetime) -> str:
    """Fixed-width UTC text, so SQL string order is time order."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def reference_taken(reference: str, owner: str) -> ConsentError:
    return ConsentError(
        f"Consent reference '{reference}' already belongs to subject '{owner}': "
        "each signed release covers one person; use that person's own reference."
    )


@dataclass(frozen=True)
class Searchable:
    """The templates one purpose may search right now, and until when that holds."""

    template_ids: NDArray[np.int64]  # sorted
    subject_ids: NDArray[np.int64]  # the subject of each template
    max_per_subject: int  # most templates any one subject has: k for distinct top-k subjects
    valid_until: datetime | None  # the earliest expiry among the consents involved


class Store:
    """The gallery's SQLite file. Opened lazily: reads of a missing file raise, the first write creates it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    # -- connection and transactions -------------------------------------------------------

    def exists(self) -> bool:
        return self._conn is not None or self.path.exists()

    def _connect(self, create: bool) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if not create and not self.path.exists():
            raise GalleryNotFoundError(
                f"No gallery at '{self.path}': enroll someone to create it, or check --gallery / CONSENTMATCH_GALLERY."
            )
        if self.path.is_dir():
            raise StorageError(f"'{self.path}' is a directory: name a gallery file, e.g. {self.path / 'gallery.db'}.")
        with self._mapped():
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            try:
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("PRAGMA secure_delete = ON")  # erased templates are overwritten, not just unlinked
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                self._migrate(conn)
            except BaseException:
                conn.close()
                raise
        self._conn = conn
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        (app_id,) = conn.execute("PRAGMA application_id").fetchone()
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        (tables,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if app_id != APPLICATION_ID and (app_id != 0 or tables):
            raise StorageError(f"'{self.path}' is an SQLite file but not a consentmatch gallery: name another file.")
        if version > len(MIGRATIONS):
            raise StorageError(f"'{self.path}' was written by a newer consentmatch (schema {version}): upgrade consentmatch.")
        for number in range(version, len(MIGRATIONS)):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {number + 1}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        """sqlite3's errors as StorageError, with advice."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                advice = "another process holds the gallery; retry when it is done"
            elif "readonly" in text:
                advice = "the gallery file or its folder is read-only; check permissions"
            elif "disk" in text or "full" in text:
                advice = "free disk space and retry; nothing was changed"
            else:
                advice = "check the path and permissions"
            raise StorageError(f"Gallery '{self.path}': {text}: {advice}.") from None
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"'{self.path}' is not a readable consentmatch gallery ({exc}).") from None

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several queries."""
        with self._lock, self._mapped():
            conn = self._connect(create=False)
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    @contextmanager
    def write(self, *, create: bool = False) -> Iterator[sqlite3.Connection]:
        """One atomic write: everything inside commits together, or nothing does.

        Only `create=True` (enrollment) may bring a missing gallery file into being.
        """
        with self._lock, self._mapped():
            conn = self._connect(create=create)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite rolls back by itself on some errors (disk full)
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- queries ---------------------------------------------------------------------------

    @staticmethod
    def generation(conn: sqlite3.Connection) -> int:
        (value,) = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(value)

    @staticmethod
    def subject_id(conn: sqlite3.Connection, name: str) -> int | None:
        row = conn.execute("SELECT id FROM subjects WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def ensure_subject(conn: sqlite3.Connection, name: str, now: datetime) -> int:
        conn.execute("INSERT OR IGNORE INTO subjects (name, created_at) VALUES (?, ?)", (name, _ts(now)))
        found = Store.subject_id(conn, name)
        assert found is not None
        return found

    @staticmethod
    def record_consent(conn: sqlite3.Connection, subject_id: int, consent: Consent, now: datetime) -> int:
        """Insert the consent, or bring an existing record of the same reference up to date.

        Raises:
            ConsentError: the reference already belongs to another subject.
        """
        row = conn.execute("SELECT id, subject_id FROM consents WHERE reference = ?", (consent.reference,)).fetchone()
        expires = _ts(consent.expires_at) if consent.expires_at else None
        if row is None:
            cursor = conn.execute(
                "INSERT INTO consents (subject_id, reference, granted_at, expires_at, jurisdiction) VALUES (?, ?, ?, ?, ?)",
                (subject_id, consent.reference, _ts(consent.granted_at or now), expires, consent.jurisdiction),
            )
            consent_id = int(cursor.lastrowid or 0)
        else:
            consent_id = int(row[0])
            if int(row[1]) != subject_id:
                raise reference_taken(consent.reference, Store.consent_owner(conn, consent.reference) or "?")
            conn.execute(
                "UPDATE consents SET expires_at = ?, jurisdiction = ? WHERE id = ?",
                (expires, consent.jurisdiction, consent_id),
            )
            conn.execute("DELETE FROM consent_purposes WHERE consent_id = ?", (consent_id,))
        conn.executemany(
            "INSERT INTO consent_purposes (consent_id, purpose) VALUES (?, ?)",
            [(consent_id, purpose) for purpose in consent.purposes],
        )
        return consent_id

    @staticmethod
    def consent_owner(conn: sqlite3.Connection, reference: str) -> str | None:
        """The subject a consent reference belongs to, if it is recorded."""
        row = conn.execute(
            "SELECT s.name FROM consents c JOIN subjects s ON s.id = c.subject_id WHERE c.reference = ?", (reference,)
        ).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def add_template(
        conn: sqlite3.Connection,
        subject_id: int,
        consent_id: int,
        embedding: NDArray[np.float32],
        photo_sha256: str,
        box: Box,
        now: datetime,
    ) -> int:
        blob = np.ascontiguousarray(embedding, dtype=_EMBEDDING).tobytes()
        cursor = conn.execute(
            "INSERT INTO templates (subject_id, consent_id, embedding, photo_sha256, box, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (subject_id, consent_id, blob, photo_sha256, json.dumps(box.to_list()), _ts(now)),
        )
        return int(cursor.lastrowid or 0)

    @staticmethod
    def template_count(conn: sqlite3.Connection, subject_id: int) -> int:
        (count,) = conn.execute("SELECT count(*) FROM templates WHERE subject_id = ?", (subject_id,)).fetchone()
        return int(count)

    @staticmethod
    def delete_subject(conn: sqlite3.Connection, subject_id: int) -> tuple[NDArray[np.int64], int]:
        """Delete a subject with its consents and templates; returns the template ids and consent count."""
        ids = np.array(
            [r[0] for r in conn.execute("SELECT id FROM templates WHERE subject_id = ?", (subject_id,))], dtype=np.int64
        )
        (consents,) = conn.execute("SELECT count(*) FROM consents WHERE subject_id = ?", (subject_id,)).fetchone()
        conn.execute("DELETE FROM subjects WHERE id = ?", (subject_id,))
        return ids, int(consents)

    @staticmethod
    def all_templates(conn: sqlite3.Connection) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        rows = conn.execute("SELECT id, embedding FROM templates ORDER BY id").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=_EMBEDDING).astype(np.float32)
        return ids, vectors.reshape(-1, DIMENSIONS)

    @staticmethod
    def searchable(conn: sqlite3.Connection, purpose: str, now: datetime) -> Searchable:
        """Templates of subjects with an active consent that lists `purpose`."""
        moment = _ts(now)
        active = """
            SELECT c.subject_id, c.expires_at FROM consents c
            JOIN consent_purposes p ON p.consent_id = c.id
            WHERE p.purpose = ? AND (c.expires_at IS NULL OR c.expires_at > ?)
        """
        (until,) = conn.execute(f"SELECT min(expires_at) FROM ({active})", (purpose, moment)).fetchone()
        rows = conn.execute(
            f"SELECT id, subject_id FROM templates WHERE subject_id IN (SELECT subject_id FROM ({active})) ORDER BY id",
            (purpose, moment),
        ).fetchall()
        array = np.array(rows, dtype=np.int64).reshape(-1, 2)
        subject_ids = np.ascontiguousarray(array[:, 1])
        return Searchable(
            template_ids=np.ascontiguousarray(array[:, 0]),
            subject_ids=subject_ids,
            max_per_subject=int(np.unique(subject_ids, return_counts=True)[1].max(initial=0)),
            valid_until=_dt(until),
        )

    @staticmethod
    def subject_names(conn: sqlite3.Connection, subject_ids: Sequence[int]) -> dict[int, str]:
        marks = ",".join("?" * len(subject_ids))
        rows = conn.execute(f"SELECT id, name FROM subjects WHERE id IN ({marks})", list(subject_ids))
        return {int(i): str(n) for i, n in rows}

    @staticmethod
    def active_purposes(conn: sqlite3.Connection, subject_id: int, now: datetime) -> set[str]:
        rows = conn.execute(
            """SELECT p.purpose FROM consents c JOIN consent_purposes p ON p.consent_id = c.id
               WHERE c.subject_id = ? AND (c.expires_at IS NULL OR c.expires_at > ?)""",
            (subject_id, _ts(now)),
        )
        return {str(r[0]) for r in rows}

    @staticmethod
    def subject_templates(conn: sqlite3.Connection, subject_id: int) -> NDArray[np.float32]:
        rows = conn.execute("SELECT embedding FROM templates WHERE subject_id = ?", (subject_id,)).fetchall()
        return np.frombuffer(b"".join(r[0] for r in rows), dtype=_EMBEDDING).astype(np.float32).reshape(-1, DIMENSIONS)

    @staticmethod
    def subjects(conn: sqlite3.Connection, now: datetime) -> list[SubjectInfo]:
        consents: dict[int, list[ConsentSummary]] = {}
        rows = conn.execute(
            """SELECT c.subject_id, c.reference, c.granted_at, c.expires_at, c.jurisdiction,
                      group_concat(p.purpose, char(10))
               FROM consents c LEFT JOIN consent_purposes p ON p.consent_id = c.id
               GROUP BY c.id ORDER BY c.id"""
        )
        for subject_id, reference, granted, expires, jurisdiction, purposes in rows:
            expires_at = _dt(expires)
            consents.setdefault(subject_id, []).append(
                ConsentSummary(
                    reference=reference,
                    purposes=tuple(sorted(purposes.split("\n"))) if purposes else (),
                    granted_at=_dt(granted) or now,
                    expires_at=expires_at,
                    jurisdiction=jurisdiction,
                    active=expires_at is None or now < expires_at,
                )
            )
        result = []
        for subject_id, name, created, count in conn.execute(
            """SELECT s.id, s.name, s.created_at, (SELECT count(*) FROM templates t WHERE t.subject_id = s.id)
               FROM subjects s ORDER BY s.name"""
        ):
            result.append(
                SubjectInfo(
                    subject=name,
                    templates=int(count),
                    enrolled_at=_dt(created) or now,
                    consents=tuple(consents.get(subject_id, ())),
                )
            )
        return result
