"""SQLite: the gallery's source of truth. Schema, transactions, and every query.

One connection per `Store`, shared by threads under a lock: SQLite's own locking then keeps
several processes safe (WAL: readers never block the writer). Every write bumps `generation`
in the same transaction, so an index built from the store knows when it is stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from typing import Any

import numpy as np
from numpy.typing import NDArray

from .consent import Consent
from .encoder import DIMENSIONS
from .errors import ConsentError, GalleryNotFoundError, StorageError
from .keys import KeyRing, aead, unseal_with
from .migrations import APPLICATION_ID, MIGRATIONS
from .policy import ConsentTerm, default_policy
from .results import Box, ConsentRecord, SubjectInfo

__all__ = ["Searchable", "Store"]

_EMBEDDING = np.dtype("<f4")
_PLAIN_BYTES = 512  # an unsealed template (schema 2 and older)
_BUSY_TIMEOUT_S = 30.0  # how long a call waits for another process's write before StorageError


def _ts(moment: datetime) -> str:
    """Fixed-width UTC text, so SQL string order is time order."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _statements(script: str) -> Iterator[str]:
    """The complete SQL statements of a script (a trigger's inner `;` does not end one)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()


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

    def __init__(self, path: Path, keys: KeyRing | None = None) -> None:
        self.path = path
        self.keys = keys or KeyRing()
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
        self._check_regular(create)
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        with self._mapped():
            while True:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S)
                try:
                    self._set_up(conn, create)
                    break
                except sqlite3.OperationalError as exc:
                    conn.close()
                    # Switching a new file to WAL, or WAL recovery, can report "locked" without
                    # waiting for SQLite's busy timeout while another process creates the same
                    # gallery: wait here instead, within the same budget.
                    if not ("locked" in str(exc) or "busy" in str(exc)) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
                except BaseException:
                    conn.close()
                    raise
        self._conn = conn
        return conn

    def _check_regular(self, create: bool) -> None:
        """Refuse a device, FIFO or socket before SQLite opens it (it would make `/dev/null-journal`
        or wait on a pipe); create a new gallery file 0600, as the keys are: SQLite gives its
        -wal, -shm and -journal files the gallery file's mode."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            info = None
        except (OSError, ValueError):
            return  # SQLite's own open says what is wrong
        if info is not None and not stat.S_ISREG(info.st_mode):
            raise StorageError(f"'{self.path}' is not a regular file (a device, pipe or socket): name a gallery file.")
        if info is None and create:
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600))
            except FileExistsError:
                pass  # another process created it first
            except OSError:
                pass  # a missing or read-only folder: SQLite's own open reports it

    def _set_up(self, conn: sqlite3.Connection, create: bool) -> None:
        self._check_owner(conn)  # before any pragma that changes the file (WAL is persistent)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA secure_delete = ON")  # erased templates are overwritten, not just unlinked
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA temp_store = MEMORY")  # no sort or temp table ever spills to a file
        self._migrate(conn)
        self._open_keys(conn, create)

    def _open_keys(self, conn: sqlite3.Connection, create: bool) -> None:
        """Open the gallery's keys; seal plaintext rows of older schemas; drop rows whose key was shredded.

        The two scans (~1 s at 1M templates) run only when the gallery's `keys_checked` differs
        from the key store's shred stamp: after a crash between an erasure's shred and its
        commit, in a restored backup, or in a gallery of an older schema. Plaintext rows are
        never written once a gallery is sealed, and every erasure records the stamp it leaves.
        """
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('gallery_id', 'keys', 'keys_checked')").fetchall())
        created = self.keys.open(str(meta["gallery_id"]), created="keys" in meta, create=True)
        stamp = self.keys.shred_stamp()
        if not created and meta.get("keys_checked") == stamp:
            return
        plaintext = conn.execute(f"SELECT count(*) FROM templates WHERE length(embedding) = {_PLAIN_BYTES}").fetchone()[0]
        known = self.keys.key_ids()
        shredded = [
            (int(i), str(k)) for i, k in conn.execute("SELECT id, key_id FROM subjects WHERE key_id IS NOT NULL")
            if k not in known
        ]
        if not created and not plaintext and not shredded:
            with contextlib.suppress(sqlite3.OperationalError):  # read-only: scan again next time
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('keys_checked', ?)", (stamp,))
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('keys_checked', ?)", (stamp,))
            if created:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('keys', 'created')")
            for subject_id, _ in shredded:  # e.g. a backup restored after an erasure: those rows stay dead
                conn.execute("DELETE FROM templates WHERE subject_id = ?", (subject_id,))
                conn.execute("UPDATE subjects SET key_id = NULL WHERE id = ?", (subject_id,))
            rows = conn.execute(
                f"SELECT id, subject_id, embedding FROM templates WHERE length(embedding) = {_PLAIN_BYTES}"
            ).fetchall()
            for template_id, subject_id, blob in rows:
                key_id = self._subject_key(conn, int(subject_id))
                conn.execute("UPDATE templates SET embedding = ? WHERE id = ?",
                             (self.keys.seal_template(key_id, bytes(blob)), template_id))
            if shredded or rows:
                conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if rows:
            self.checkpoint()

    def _subject_key(self, conn: sqlite3.Connection, subject_id: int) -> str:
        """The subject's data key id, created with its first template."""
        (key_id,) = conn.execute("SELECT key_id FROM subjects WHERE id = ?", (subject_id,)).fetchone()
        if key_id is None or self.keys.data_key(str(key_id)) is None:
            key_id = self.keys.new_subject_key()
            conn.execute("UPDATE subjects SET key_id = ? WHERE id = ?", (key_id, subject_id))
        return str(key_id)

    def shred(self, conn: sqlite3.Connection, key_ids: Sequence[str | None]) -> None:
        """Destroy erased subjects' data keys: no copy of their templates stays readable.

        The last step of an erasure's write transaction (`conn`), which records the new shred
        stamp: once it commits, no row of these keys is left (see `_open_keys`).
        """
        self.keys.shred([k for k in key_ids if k])
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('keys_checked', ?)", (self.keys.shred_stamp(),))

    def checkpoint(self) -> None:
        """Copy the WAL into the database now. PASSIVE: an erasure never waits on readers; pages a
        reader still holds stay in the WAL, sealed under a key that no longer exists."""
        with self._lock, self._mapped():
            if self._conn is not None:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    @staticmethod
    def subject_key_id(conn: sqlite3.Connection, subject_id: int) -> str | None:
        row = conn.execute("SELECT key_id FROM subjects WHERE id = ?", (subject_id,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def _check_owner(self, conn: sqlite3.Connection) -> None:
        # One statement, one snapshot: another process may be creating this very gallery.
        app_id, tables = conn.execute(
            "SELECT (SELECT application_id FROM pragma_application_id()), (SELECT count(*) FROM sqlite_master)"
        ).fetchone()
        if app_id != APPLICATION_ID and (app_id != 0 or tables):
            raise StorageError(f"'{self.path}' is an SQLite file but not a consentmatch gallery: name another file.")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Apply the missing steps, each in one transaction that also re-reads the version, so
        two processes creating the same gallery at once cannot both run a step."""
        while True:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > len(MIGRATIONS):
                raise StorageError(
                    f"'{self.path}' was written by a newer consentmatch (schema {version}): upgrade consentmatch."
                )
            if version == len(MIGRATIONS):
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                (current,) = conn.execute("PRAGMA user_version").fetchone()
                if current == version:
                    for statement in _statements(MIGRATIONS[version]):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {version + 1}")
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
            elif "readonly" in text or "unable to open" in text:
                advice = "the gallery file or its folder is read-only or missing; check that both exist and are writable"
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
    def write(self, *, create: bool = False, bump: bool = True) -> Iterator[sqlite3.Connection]:
        """One atomic write: everything inside commits together, or nothing does.

        Only `create=True` (enrollment) may bring a missing gallery file into being.
        `bump=False` for writes that change no template or consent (audit events,
        interactions), so in-memory indexes stay valid.
        """
        with self._lock, self._mapped():
            conn = self._connect(create=create)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                if bump:
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
            self.keys.close()

    # -- queries ---------------------------------------------------------------------------

    @staticmethod
    def generation(conn: sqlite3.Connection) -> int:
        (value,) = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(value)

    @staticmethod
    def templates_state(conn: sqlite3.Connection) -> str:
        """A random stamp, new with every template row added, changed or deleted (migration 4)."""
        (value,) = conn.execute("SELECT value FROM meta WHERE key = 'templates_state'").fetchone()
        return str(value)

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
    def record_consent(
        conn: sqlite3.Connection, subject_id: int, consent: Consent, now: datetime, email_hash: str | None = None
    ) -> int:
        """Insert the consent, or bring an existing record of the same reference up to date.

        Raises:
            ConsentError: the reference belongs to another subject, or was revoked.
        """
        row = conn.execute(
            "SELECT id, subject_id, revoked_at FROM consents WHERE reference = ?", (consent.reference,)
        ).fetchone()
        expires = _ts(consent.expires_at) if consent.expires_at else None
        fields = (expires, consent.jurisdiction, consent.signer, consent.evidence_sha256, consent.notice_version)
        if row is None:
            cursor = conn.execute(
                """INSERT INTO consents (subject_id, reference, granted_at, expires_at, jurisdiction, signer,
                                         evidence_sha256, notice_version, email_hash)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (subject_id, consent.reference, _ts(consent.granted_at or now), *fields, email_hash),
            )
            consent_id = int(cursor.lastrowid or 0)
        else:
            consent_id = int(row[0])
            if int(row[1]) != subject_id:
                raise reference_taken(consent.reference, Store.consent_owner(conn, consent.reference) or "?")
            if row[2] is not None:
                raise ConsentError(
                    f"Consent '{consent.reference}' was revoked: a new consent needs a new reference."
                )
            conn.execute(
                """UPDATE consents SET expires_at = ?, jurisdiction = ?, signer = ?,
                          evidence_sha256 = coalesce(?, evidence_sha256), notice_version = coalesce(?, notice_version),
                          email_hash = coalesce(?, email_hash)
                   WHERE id = ?""",
                (*fields, email_hash, consent_id),
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

    def add_template(
        self,
        conn: sqlite3.Connection,
        subject_id: int,
        consent_id: int,
        embedding: NDArray[np.float32],
        photo_sha256: str,
        box: Box,
        now: datetime,
    ) -> int:
        plain = np.ascontiguousarray(embedding, dtype=_EMBEDDING).tobytes()
        blob = self.keys.seal_template(self._subject_key(conn, subject_id), plain)
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

    def all_templates(self, conn: sqlite3.Connection) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Every readable template, decrypted in memory (never written anywhere in plaintext)."""
        self.keys.load_all()
        return self._unsealed(conn.execute(
            "SELECT t.id, s.key_id, t.embedding FROM templates t JOIN subjects s ON s.id = t.subject_id ORDER BY t.id"
        ))

    def _unsealed(self, rows: Iterable[tuple[int, str | None, bytes]]) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Decrypt (id, key id, sealed) rows; rows whose key is shredded or does not fit are left out."""
        ciphers: dict[str, Any] = {}
        ids: list[int] = []
        plain: list[bytes] = []
        for template_id, key_id, blob in rows:
            if key_id is None:
                continue
            cipher = ciphers.get(key_id)
            if cipher is None:
                dek = self.keys.data_key(key_id)
                if dek is None:
                    continue
                cipher = ciphers[key_id] = aead(dek)
            data = unseal_with(cipher, bytes(blob), key_id.encode())
            if data is not None:
                ids.append(int(template_id))
                plain.append(data)
        vectors = np.frombuffer(b"".join(plain), dtype=_EMBEDDING).astype(np.float32)
        return np.array(ids, dtype=np.int64), vectors.reshape(-1, DIMENSIONS)

    @staticmethod
    def searchable(conn: sqlite3.Connection, purpose: str | None, now: datetime) -> Searchable:
        """Templates of subjects with an active consent for `purpose` (None: for any purpose).

        Active: not revoked, not expired, and the subject not past its retention date.
        """
        moment = _ts(now)
        active = f"""
            SELECT c.subject_id, c.expires_at, s.destroy_by FROM consents c
            JOIN subjects s ON s.id = c.subject_id
            WHERE c.revoked_at IS NULL AND (c.expires_at IS NULL OR c.expires_at > :now)
              AND (s.destroy_by IS NULL OR s.destroy_by > :now)
              {"AND c.id IN (SELECT consent_id FROM consent_purposes WHERE purpose = :purpose)" if purpose else ""}
        """
        params = {"now": moment, "purpose": purpose}
        (expiry, retention) = conn.execute(f"SELECT min(expires_at), min(destroy_by) FROM ({active})", params).fetchone()
        rows = conn.execute(  # read from the covering index on subject_id; sorted here, 40% faster than ORDER BY
            f"SELECT id, subject_id FROM templates WHERE subject_id IN (SELECT subject_id FROM ({active}))", params
        ).fetchall()
        array = np.array(rows, dtype=np.int64).reshape(-1, 2)
        array = array[np.argsort(array[:, 0])]
        subject_ids = np.ascontiguousarray(array[:, 1])
        bounds = [d for d in (_dt(expiry), _dt(retention)) if d is not None]
        return Searchable(
            template_ids=np.ascontiguousarray(array[:, 0]),
            subject_ids=subject_ids,
            max_per_subject=int(np.unique(subject_ids, return_counts=True)[1].max(initial=0)),
            valid_until=min(bounds) if bounds else None,
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
               JOIN subjects s ON s.id = c.subject_id
               WHERE c.subject_id = ? AND c.revoked_at IS NULL AND (c.expires_at IS NULL OR c.expires_at > ?)
                 AND (s.destroy_by IS NULL OR s.destroy_by > ?)""",
            (subject_id, _ts(now), _ts(now)),
        )
        return {str(r[0]) for r in rows}

    def subject_templates(self, conn: sqlite3.Connection, subject_id: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        return self._unsealed(conn.execute(
            """SELECT t.id, s.key_id, t.embedding FROM templates t JOIN subjects s ON s.id = t.subject_id
               WHERE t.subject_id = ? ORDER BY t.id""",
            (subject_id,),
        ))

    @staticmethod
    def consent_records(
        conn: sqlite3.Connection, now: datetime, *, subject_id: int | None = None, reference: str | None = None
    ) -> list[ConsentRecord]:
        """Consent records (revoked ones included, as tombstones), oldest first."""
        where: list[str] = []
        params: list[object] = []
        if subject_id is not None:
            where.append("c.subject_id = ?")
            params.append(subject_id)
        if reference is not None:
            where.append("c.reference = ?")
            params.append(reference)
        rows = conn.execute(
            f"""SELECT c.reference, s.name, c.granted_at, c.expires_at, c.jurisdiction, c.signer, c.evidence_sha256,
                       c.notice_version, c.revoked_at, s.destroy_by,
                       (SELECT group_concat(purpose, char(10)) FROM consent_purposes p WHERE p.consent_id = c.id)
                FROM consents c JOIN subjects s ON s.id = c.subject_id
                {"WHERE " + " AND ".join(where) if where else ""} ORDER BY c.id""",
            params,
        )
        records = []
        for reference_, name, granted, expires, jurisdiction, signer, evidence, notice, revoked, destroy, purposes in rows:
            expires_at, revoked_at, destroy_at = _dt(expires), _dt(revoked), _dt(destroy)
            records.append(
                ConsentRecord(
                    reference=reference_,
                    subject=name,
                    purposes=tuple(sorted(purposes.split("\n"))) if purposes else (),
                    granted_at=_dt(granted) or now,
                    expires_at=expires_at,
                    jurisdiction=jurisdiction,
                    active=revoked_at is None
                    and (expires_at is None or now < expires_at)
                    and (destroy_at is None or now < destroy_at),
                    signer=signer,
                    evidence_sha256=evidence,
                    notice_version=notice,
                    revoked_at=revoked_at,
                )
            )
        return records

    @staticmethod
    def subjects(conn: sqlite3.Connection, now: datetime) -> list[SubjectInfo]:
        consents: dict[str, list[ConsentRecord]] = {}
        for record in Store.consent_records(conn, now):
            consents.setdefault(record.subject, []).append(record)
        result = []
        for name, created, count in conn.execute(
            """SELECT s.name, s.created_at, (SELECT count(*) FROM templates t WHERE t.subject_id = s.id)
               FROM subjects s ORDER BY s.name"""
        ):
            result.append(
                SubjectInfo(subject=name, templates=int(count), enrolled_at=_dt(created) or now,
                            consents=tuple(consents.get(name, ())))
            )
        return result

    # -- erasure, retention, policy, opt-outs ------------------------------------------------

    @staticmethod
    def delete_templates(conn: sqlite3.Connection, subject_id: int) -> str | None:
        """Delete a subject's templates only (consent records stay, as tombstones).

        Returns the data key id to shred once this commits; the subject gets a new key if re-enrolled.
        """
        key_id = Store.subject_key_id(conn, subject_id)
        conn.execute("DELETE FROM templates WHERE subject_id = ?", (subject_id,))
        conn.execute("UPDATE subjects SET key_id = NULL WHERE id = ?", (subject_id,))
        return key_id

    @staticmethod
    def revoke(conn: sqlite3.Connection, reference: str, now: datetime) -> tuple[int, bool]:
        """Mark a consent revoked; returns (its subject id, whether it was already revoked).

        Raises:
            ConsentError: no consent has this reference.
        """
        row = conn.execute("SELECT subject_id, revoked_at FROM consents WHERE reference = ?", (reference,)).fetchone()
        if row is None:
            raise ConsentError(f"No consent has the reference '{reference}': check it with `consentmatch consent list`.")
        if row[1] is None:
            conn.execute("UPDATE consents SET revoked_at = ? WHERE reference = ?", (_ts(now), reference))
        return int(row[0]), row[1] is not None

    @staticmethod
    def revoke_all(conn: sqlite3.Connection, subject_id: int, now: datetime) -> None:
        conn.execute("UPDATE consents SET revoked_at = ? WHERE subject_id = ? AND revoked_at IS NULL", (_ts(now), subject_id))

    @staticmethod
    def retention_terms(conn: sqlite3.Connection, subject_id: int) -> tuple[list[ConsentTerm], datetime, datetime | None]:
        terms = [
            ConsentTerm(jurisdiction=j, expires_at=_dt(e))
            for j, e in conn.execute(
                "SELECT jurisdiction, expires_at FROM consents WHERE subject_id = ? AND revoked_at IS NULL", (subject_id,)
            )
        ]
        created, last = conn.execute(
            "SELECT created_at, last_interaction_at FROM subjects WHERE id = ?", (subject_id,)
        ).fetchone()
        return terms, _dt(created) or datetime.now(timezone.utc), _dt(last)

    @staticmethod
    def set_retention(conn: sqlite3.Connection, subject_id: int, date: datetime | None, rule: str) -> None:
        conn.execute(
            "UPDATE subjects SET destroy_by = ?, destroy_rule = ? WHERE id = ?",
            (_ts(date) if date else None, rule, subject_id),
        )

    @staticmethod
    def touch(conn: sqlite3.Connection, subject_id: int, now: datetime) -> bool:
        """Record an interaction; False when the subject was erased meanwhile."""
        cursor = conn.execute("UPDATE subjects SET last_interaction_at = ? WHERE id = ?", (_ts(now), subject_id))
        return cursor.rowcount > 0

    @staticmethod
    def retention(conn: sqlite3.Connection) -> list[tuple[int, str, int, datetime | None, str]]:
        """(subject id, name, templates, destroy_by, rule) of subjects that hold templates."""
        rows = conn.execute(
            """SELECT s.id, s.name, count(t.id), s.destroy_by, coalesce(s.destroy_rule, '')
               FROM subjects s JOIN templates t ON t.subject_id = s.id GROUP BY s.id ORDER BY s.name"""
        )
        return [(int(i), str(n), int(c), _dt(d), str(r)) for i, n, c, d, r in rows]

    @staticmethod
    def template_rows(conn: sqlite3.Connection, subject_id: int) -> list[dict[str, Any]]:
        """Template metadata for a subject access request: never the embedding."""
        rows = conn.execute(
            """SELECT t.id, t.created_at, t.photo_sha256, t.box, c.reference FROM templates t
               JOIN consents c ON c.id = t.consent_id WHERE t.subject_id = ? ORDER BY t.id""",
            (subject_id,),
        )
        return [
            {"id": i, "created_at": created, "photo_sha256": sha, "box": json.loads(box), "consent_reference": ref}
            for i, created, sha, box, ref in rows
        ]

    @staticmethod
    def policy(conn: sqlite3.Connection) -> dict[str, Any]:
        stored = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM policy")}
        return {key: stored.get(key, default) for key, default in default_policy().items()}

    @staticmethod
    def set_policy(conn: sqlite3.Connection, key: str, value: Any) -> None:
        conn.execute(
            "INSERT INTO policy (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    @staticmethod
    def optout_salt(conn: sqlite3.Connection) -> str:
        (salt,) = conn.execute("SELECT value FROM meta WHERE key = 'optout_salt'").fetchone()
        return str(salt)

    @staticmethod
    def add_optout(conn: sqlite3.Connection, kind: str, value: str, now: datetime) -> bool:
        """Returns False when the entry was already there."""
        cursor = conn.execute(
            "INSERT OR IGNORE INTO optouts (kind, value, added_at) VALUES (?, ?, ?)", (kind, value, _ts(now))
        )
        return cursor.rowcount > 0

    @staticmethod
    def remove_optout(conn: sqlite3.Connection, kind: str, value: str) -> bool:
        return conn.execute("DELETE FROM optouts WHERE kind = ? AND value = ?", (kind, value)).rowcount > 0

    @staticmethod
    def optouts(conn: sqlite3.Connection) -> list[tuple[str, str, datetime]]:
        rows = conn.execute("SELECT kind, value, added_at FROM optouts ORDER BY id")
        return [(str(k), str(v), _dt(a) or datetime.now(timezone.utc)) for k, v, a in rows]

    @staticmethod
    def is_opted_out(conn: sqlite3.Connection, subject: str, email_hash: str | None) -> bool:
        row = conn.execute(
            "SELECT 1 FROM optouts WHERE (kind = 'subject' AND value = ?) OR (kind = 'email' AND value = ?)",
            (subject, email_hash or ""),
        ).fetchone()
        return row is not None

    @staticmethod
    def subjects_with_email(conn: sqlite3.Connection, email_hash: str) -> list[str]:
        rows = conn.execute(
            """SELECT DISTINCT s.name FROM consents c JOIN subjects s ON s.id = c.subject_id
               WHERE c.email_hash = ? ORDER BY s.name""",
            (email_hash,),
        )
        return [str(r[0]) for r in rows]
