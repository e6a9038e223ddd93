"""SQLite: the gallery's source of truth. Schema, transactions, and every query.

One connection per `Store`, shared by threads under a lock: SQLite's own locking then keeps
several processes safe (WAL: readers never block the writer). Every write bumps `generation`
in the same transaction, so an index built from the store knows when it is stale.

Integrity against a writer of the file who lacks the keys (migration 5): each template's
associated data binds it to the gallery, its row id, and its subject's id, name and key id;
each subject and consent row carries an HMAC-SHA256 (`mac`) under the gallery's MAC key
(keys.py) over all its columns (a consent's: and its sorted purposes). Rows are checked where
they are read for an answer: the subjects a search returns, with the consents that made them
searchable and the template they were found by; listings. A failing row is a `TamperingError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import sqlite3
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

from . import audit
from .consent import Consent
from .vision.types import DIMENSIONS
from .errors import ConsentError, GalleryNotFoundError, StorageError, TamperingError
from .keys import KeyRing, aead, unseal, unseal_with
from .migrations import APPLICATION_ID, MIGRATIONS
from .policy import default_policy
from .retention import ConsentTerm, destroy_by
from .settings import Settings
from .results import Box, ConsentRecord, SubjectInfo

__all__ = ["Searchable", "Store", "record_rotation", "rotation_event"]

_EMBEDDING = np.dtype("<f4")
_PLAIN_BYTES = 512  # an unsealed template (schema 2 and older)
_BUSY_TIMEOUT_S = 30.0  # how long a call waits for another process's write before StorageError
# What a row's MAC covers: every column but the MAC itself; a consent's purposes too (sorted in
# Python: the order json_group_array sees is SQLite's choice).
_SUBJECT_FIELDS = "s.id, s.name, s.created_at, s.key_id, s.last_interaction_at, s.destroy_by, s.destroy_rule"
_CONSENT_FIELDS = (
    "c.id, c.subject_id, c.reference, c.granted_at, c.expires_at, c.jurisdiction, c.signer, c.evidence_sha256, "
    "c.notice_version, c.email_hash, c.revoked_at, "
    "(SELECT json_group_array(purpose) FROM consent_purposes p WHERE p.consent_id = c.id)"
)
_BIND_BATCH = 10_000  # templates re-sealed per query when a gallery is bound: memory stays flat at 1M


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


def _subject_content(row: Sequence[Any]) -> list[Any]:
    """What a subject row's MAC covers, from a row that starts with _SUBJECT_FIELDS."""
    return ["subject", *row[:7]]


def _consent_content(row: Sequence[Any]) -> list[Any]:
    """What a consent row's MAC covers, from a row that starts with _CONSENT_FIELDS."""
    return ["consent", *row[:11], sorted(json.loads(row[11]))]


def reference_taken(reference: str, owner: str) -> ConsentError:
    return ConsentError(
        f"Consent reference '{reference}' already belongs to subject '{owner}': "
        "each signed release covers one person; use that person's own reference."
    )


def rotation_event(conn: sqlite3.Connection, at: datetime, actor: str, data_keys: int, key_source: str) -> str:
    """A key rotation's audit event, as the text the key store keeps with the rotation until the
    gallery has it (`KeyRing.rotate`): it names the last event before it and has an id of its own."""
    (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM audit").fetchone()
    details = {"data_keys": data_keys, "key_source": key_source, "rotation": secrets.token_hex(8)}
    return json.dumps({"at": _ts(at), "actor": actor, "after": int(last), "details": details})


def record_rotation(conn: sqlite3.Connection, event: str) -> None:
    """Append a rotation's audit event, unless the trail has it already (it then follows `after`)."""
    fields = json.loads(event)
    details = fields["details"]
    recorded = conn.execute(
        "SELECT 1 FROM audit WHERE seq > ? AND action = 'key-rotate' AND json_extract(details, '$.rotation') = ?",
        (fields["after"], details["rotation"]),
    ).fetchone()
    if recorded is None:
        audit.append(conn, at=datetime.fromisoformat(fields["at"]), actor=fields["actor"], action="key-rotate",
                     details=details)


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
        """Open the gallery's keys; bind the rows of older schemas once; drop rows whose key was shredded.

        The two scans (~1 s at 1M templates) run only when the gallery's `keys_checked` differs
        from the key store's shred stamp: after a crash between an erasure's shred and its
        commit, in a restored backup, or in a gallery of an older schema. Plaintext rows are
        never written once a gallery is sealed, and every erasure records the stamp it leaves.
        Binding (`_bind`) happens once per key store, which records it: a writer of the file
        alone cannot ask for it again to have forged rows vouched for.
        """
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('gallery_id', 'keys', 'keys_checked')").fetchall())
        created = self.keys.open(str(meta["gallery_id"]), created="keys" in meta, create=True)
        self._record_lost_rotation(conn)
        self.keys.mac_key()  # unwrapped (or created) now, under the key the open checked, not in a later write
        stamp = self.keys.shred_stamp()
        bound = self.keys.bound()
        if bound and not created and meta.get("keys_checked") == stamp:
            return
        known = self.keys.key_ids()
        shredded = [
            (int(i), str(k)) for i, k in conn.execute("SELECT id, key_id FROM subjects WHERE key_id IS NOT NULL")
            if k not in known
        ]
        if bound and not created and not shredded:
            with contextlib.suppress(sqlite3.OperationalError):  # read-only: scan again next time
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('keys_checked', ?)", (stamp,))
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('keys_checked', ?)", (stamp,))
            if created:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('keys', 'created')")
            binding = not bound and not self.keys.bound()  # another process may have bound it meanwhile
            for subject_id, _ in shredded:  # e.g. a backup restored after an erasure: those rows stay dead
                with contextlib.nullcontext() if binding else self.renewing(conn, subject_id, strict=False):
                    conn.execute("DELETE FROM templates WHERE subject_id = ?", (subject_id,))
                    conn.execute("UPDATE subjects SET key_id = NULL WHERE id = ?", (subject_id,))
                    self._revoke_erased(conn, subject_id)
            resealed = self._bind(conn) if binding else 0
            if shredded or resealed:
                conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if binding:
            self.keys.set_bound()  # after the commit: a crash before it only binds again, alike
        if resealed:
            self.checkpoint()

    @staticmethod
    def _revoke_erased(conn: sqlite3.Connection, subject_id: int) -> None:
        """Revoke (audited) the consents of a subject whose data key was shredded: the erasure wins
        over a copy of the gallery from before it, which must not bring them back as consented."""
        now = datetime.now(timezone.utc)
        references = [str(r) for (r,) in conn.execute(
            "SELECT reference FROM consents WHERE subject_id = ? AND revoked_at IS NULL ORDER BY id", (subject_id,)
        )]
        if not references:
            return
        Store.revoke_all(conn, subject_id, now)
        terms, enrolled, last = Store.retention_terms(conn, subject_id)
        Store.set_retention(conn, subject_id, *destroy_by(terms, enrolled, last))
        (name,) = conn.execute("SELECT name FROM subjects WHERE id = ?", (subject_id,)).fetchone()
        audit.append(conn, at=now, actor="consentmatch", action="consent-revoke", subject=str(name), details={
            "consents": references, "reason": "the subject's data key was shredded: erased after this copy of the gallery was made",
        })

    def _record_lost_rotation(self, conn: sqlite3.Connection) -> None:
        """Record a key rotation whose audit event was lost (its process stopped between the key
        store's commit and the gallery's). A gallery that cannot be written now leaves it for later."""
        event = self.keys.unrecorded_rotation()
        if event is None:
            return
        with contextlib.suppress(sqlite3.OperationalError):
            conn.execute("BEGIN IMMEDIATE")
            try:
                record_rotation(conn, event)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self.keys.rotation_recorded(event)

    def _bind(self, conn: sqlite3.Connection) -> int:
        """Bind a gallery of an older schema to its keys, inside the open's transaction; returns
        the templates re-sealed.

        Templates: plaintext rows (schema 2) are sealed, rows sealed with their key id alone
        (schemas 3-4) are sealed again with their full binding; a row that opens neither way is
        left as it is (bound by an earlier run, or damaged: refused where read). Then every
        subject and consent row gets its MAC.
        """
        self.keys.load_all()
        resealed, last = 0, 0
        while True:
            rows = conn.execute(
                """SELECT t.id, t.subject_id, s.name, s.key_id, t.embedding FROM templates t
                   JOIN subjects s ON s.id = t.subject_id WHERE t.id > ? ORDER BY t.id LIMIT ?""",
                (last, _BIND_BATCH),
            ).fetchall()
            if not rows:
                break
            for template_id, subject_id, name, key_id, blob in rows:
                last = int(template_id)
                plain: bytes | None
                if len(blob) == _PLAIN_BYTES:
                    key_id, plain = self._subject_key(conn, int(subject_id)), bytes(blob)
                else:
                    dek = self.keys.data_key(str(key_id)) if key_id is not None else None
                    plain = unseal(dek, bytes(blob), str(key_id).encode()) if dek is not None else None
                    if plain is None:
                        continue
                aad = self._binding(int(subject_id), str(name), str(key_id)) + str(template_id).encode()
                conn.execute("UPDATE templates SET embedding = ? WHERE id = ?",
                             (self.keys.seal_template(str(key_id), plain, aad), template_id))
                resealed += 1
        for (subject_id,) in conn.execute("SELECT id FROM subjects").fetchall():
            self.seal_subject(conn, int(subject_id))
        for (consent_id,) in conn.execute("SELECT id FROM consents").fetchall():
            self.seal_consent(conn, int(consent_id))
        return resealed

    def _subject_key(self, conn: sqlite3.Connection, subject_id: int) -> str:
        """The subject's data key id, created with its first template."""
        (key_id,) = conn.execute("SELECT key_id FROM subjects WHERE id = ?", (subject_id,)).fetchone()
        if key_id is None or self.keys.data_key(str(key_id)) is None:
            key_id = self.keys.new_subject_key()
            conn.execute("UPDATE subjects SET key_id = ? WHERE id = ?", (key_id, subject_id))
        return str(key_id)

    # -- integrity ---------------------------------------------------------------------------

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

    def seal_subject(self, conn: sqlite3.Connection, subject_id: int) -> None:
        """Write the MAC of a subject row as it is now (nothing when the row is gone)."""
        row = conn.execute(f"SELECT {_SUBJECT_FIELDS} FROM subjects s WHERE s.id = ?", (subject_id,)).fetchone()
        if row is not None:
            conn.execute("UPDATE subjects SET mac = ? WHERE id = ?", (self._mac(_subject_content(row)), subject_id))

    def seal_consent(self, conn: sqlite3.Connection, consent_id: int) -> None:
        """Write the MAC of a consent row and its purposes as they are now."""
        row = conn.execute(f"SELECT {_CONSENT_FIELDS} FROM consents c WHERE c.id = ?", (consent_id,)).fetchone()
        if row is not None:
            conn.execute("UPDATE consents SET mac = ? WHERE id = ?", (self._mac(_consent_content(row)), consent_id))

    def _intact_rows(
        self, conn: sqlite3.Connection, subject_id: int
    ) -> tuple[set[tuple[str, int]], set[tuple[str, int]], str | None]:
        """A subject's row and its consent rows: (those whose MAC holds, all of them, the first that fails)."""
        intact: set[tuple[str, int]] = set()
        every: set[tuple[str, int]] = set()
        problem = None
        row = conn.execute(f"SELECT {_SUBJECT_FIELDS}, s.mac FROM subjects s WHERE s.id = ?", (subject_id,)).fetchone()
        if row is not None:
            every.add(("subject", subject_id))
            if self._holds(_subject_content(row), row[7]):
                intact.add(("subject", subject_id))
            else:
                problem = f"the subject '{row[1]}'"
        for row in conn.execute(f"SELECT {_CONSENT_FIELDS}, c.mac FROM consents c WHERE c.subject_id = ?", (subject_id,)):
            every.add(("consent", int(row[0])))
            if self._holds(_consent_content(row), row[12]):
                intact.add(("consent", int(row[0])))
            elif problem is None:
                problem = f"the consent record '{row[2]}'"
        return intact, every, problem

    def check_subject(self, conn: sqlite3.Connection, subject_id: int) -> None:
        """Refuse a subject whose row or any of whose consents (with their purposes) was edited.

        Raises:
            TamperingError: a MAC does not hold.
        """
        _, _, problem = self._intact_rows(conn, subject_id)
        if problem is not None:
            raise self._tampered(problem)

    def check_found(self, conn: sqlite3.Connection, found: Iterable[tuple[int, int]]) -> None:
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
                self.check_subject(conn, subject_id)
                checked.add(subject_id)
            row = conn.execute(
                """SELECT t.embedding, s.name, s.key_id FROM templates t JOIN subjects s ON s.id = t.subject_id
                   WHERE t.id = ? AND t.subject_id = ?""",
                (template_id, subject_id),
            ).fetchone()
            if row is None:
                name = Store.subject_names(conn, [subject_id]).get(subject_id, "?")
                raise self._tampered(f"the template {template_id} of subject '{name}'")
            blob, name, key_id = row
            dek = self.keys.data_key(str(key_id)) if key_id is not None else None
            if dek is None:  # the subject is being erased: its key goes first (see Gallery._erase)
                continue
            aad = self._binding(subject_id, str(name), str(key_id)) + str(template_id).encode()
            if unseal(dek, bytes(blob), aad) is None:
                raise self._tampered(f"the templates of subject '{name}'")

    @contextmanager
    def renewing(self, conn: sqlite3.Connection, subject_id: int, *, strict: bool) -> Iterator[None]:
        """Renew the MACs of a subject's row and consents around a write that changes them.

        Only rows whose MAC held before, and rows the write adds, are renewed: a row edited
        outside consentmatch is never vouched for. `strict`: refuse the write instead (an
        erasure is never refused; the rows it leaves edited keep failing their check).

        Raises:
            TamperingError: `strict`, and a row of the subject fails its check.
        """
        intact, before, problem = self._intact_rows(conn, subject_id)
        if strict and problem is not None:
            raise self._tampered(problem)
        yield
        if ("subject", subject_id) in intact:
            self.seal_subject(conn, subject_id)
        for (consent_id,) in conn.execute("SELECT id FROM consents WHERE subject_id = ?", (subject_id,)).fetchall():
            if ("consent", consent_id) in intact or ("consent", consent_id) not in before:
                self.seal_consent(conn, int(consent_id))

    def check_all(self, conn: sqlite3.Connection) -> str | None:
        """Check every subject, consent and template of the gallery; the first that fails, or None."""
        for row in conn.execute(f"SELECT {_SUBJECT_FIELDS}, s.mac FROM subjects s ORDER BY s.id"):
            if not self._holds(_subject_content(row), row[7]):
                return f"the subject '{row[1]}'"
        for row in conn.execute(f"SELECT {_CONSENT_FIELDS}, c.mac FROM consents c ORDER BY c.id"):
            if not self._holds(_consent_content(row), row[12]):
                return f"the consent record '{row[2]}'"
        try:
            self.all_templates(conn)
        except TamperingError as exc:
            return exc.row
        return None

    def email_hashes(self, conn: sqlite3.Connection, email: str) -> list[str]:
        """An e-mail's hashes: the stored one first, HMAC-SHA256 under a key derived from the MAC
        key (so a copy of the file alone cannot test addresses against it); then, while the file
        still holds hashes made under its own salt (schema 4 and older), that one, to match them."""
        address = email.strip().lower().encode()
        key = hmac.new(self.keys.mac_key(), b"consentmatch e-mail hash", hashlib.sha256).digest()
        hashes = [hmac.new(key, address, hashlib.sha256).hexdigest()]
        salt = Store.optout_salt(conn)
        if salt is not None:
            hashes.append(hmac.new(bytes.fromhex(salt), address, hashlib.sha256).hexdigest())
        return hashes

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

    def ensure_subject(self, conn: sqlite3.Connection, name: str, now: datetime) -> int:
        cursor = conn.execute("INSERT OR IGNORE INTO subjects (name, created_at) VALUES (?, ?)", (name, _ts(now)))
        found = Store.subject_id(conn, name)
        assert found is not None
        if cursor.rowcount > 0:
            self.seal_subject(conn, found)
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
        key_id = self._subject_key(conn, subject_id)
        (name,) = conn.execute("SELECT name FROM subjects WHERE id = ?", (subject_id,)).fetchone()
        # The row first, for its id: the sealed template is bound to it (`_binding`).
        cursor = conn.execute(
            "INSERT INTO templates (subject_id, consent_id, embedding, photo_sha256, box, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (subject_id, consent_id, b"", photo_sha256, json.dumps(box.to_list()), _ts(now)),
        )
        template_id = int(cursor.lastrowid or 0)
        aad = self._binding(subject_id, str(name), key_id) + str(template_id).encode()
        conn.execute("UPDATE templates SET embedding = ? WHERE id = ?", (self.keys.seal_template(key_id, plain, aad), template_id))
        return template_id

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
            """SELECT t.id, t.subject_id, s.name, s.key_id, t.embedding FROM templates t
               JOIN subjects s ON s.id = t.subject_id ORDER BY t.id"""
        ))

    def _unsealed(
        self, rows: Iterable[tuple[int, int, str, str | None, bytes]], *, strict: bool = True
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Decrypt (id, subject id, name, key id, sealed) rows; rows whose key is shredded are left out.

        A row whose key is there but does not open it was edited outside consentmatch (moved,
        renamed, swapped): refused, or left out when not `strict` (an erasure is never refused).

        Raises:
            TamperingError: `strict`, and a row does not open.
        """
        ciphers: dict[int, tuple[Any, bytes] | None] = {}
        ids: list[int] = []
        plain: list[bytes] = []
        for template_id, subject_id, name, key_id, blob in rows:
            if key_id is None:
                continue
            if subject_id not in ciphers:
                dek = self.keys.data_key(key_id)
                ciphers[subject_id] = None if dek is None else (aead(dek), self._binding(subject_id, name, key_id))
            entry = ciphers[subject_id]
            if entry is None:
                continue
            data = unseal_with(entry[0], bytes(blob), entry[1] + str(template_id).encode())
            if data is not None:
                ids.append(int(template_id))
                plain.append(data)
            elif strict:
                raise self._tampered(f"the templates of subject '{name}'")
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

    def subject_templates(
        self, conn: sqlite3.Connection, subject_id: int, *, strict: bool = True
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        return self._unsealed(conn.execute(
            """SELECT t.id, t.subject_id, s.name, s.key_id, t.embedding FROM templates t
               JOIN subjects s ON s.id = t.subject_id WHERE t.subject_id = ? ORDER BY t.id""",
            (subject_id,),
        ), strict=strict)

    def consent_records(
        self, conn: sqlite3.Connection, now: datetime, *, subject_id: int | None = None, reference: str | None = None
    ) -> list[ConsentRecord]:
        """Consent records (revoked ones included, as tombstones), oldest first.

        Raises:
            TamperingError: a record, its purposes or its subject's row was edited outside consentmatch.
        """
        where: list[str] = []
        params: list[object] = []
        if subject_id is not None:
            where.append("c.subject_id = ?")
            params.append(subject_id)
        if reference is not None:
            where.append("c.reference = ?")
            params.append(reference)
        rows = conn.execute(
            f"""SELECT {_CONSENT_FIELDS}, c.mac, {_SUBJECT_FIELDS}, s.mac
                FROM consents c JOIN subjects s ON s.id = c.subject_id
                {"WHERE " + " AND ".join(where) if where else ""} ORDER BY c.id""",
            params,
        )
        records = []
        subjects_checked: set[int] = set()
        for row in rows:
            consent, subject = row[:13], row[13:]
            if not self._holds(_consent_content(consent), consent[12]):
                raise self._tampered(f"the consent record '{consent[2]}'")
            if subject[0] not in subjects_checked:
                if not self._holds(_subject_content(subject), subject[7]):
                    raise self._tampered(f"the subject '{subject[1]}'")
                subjects_checked.add(subject[0])
            reference_, granted, expires, jurisdiction, signer, evidence, notice = consent[2:9]
            name, revoked, destroy, purposes = subject[1], consent[10], subject[5], _consent_content(consent)[-1]
            expires_at, revoked_at, destroy_at = _dt(expires), _dt(revoked), _dt(destroy)
            records.append(
                ConsentRecord(
                    reference=reference_,
                    subject=name,
                    purposes=tuple(purposes),
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

    def subjects(self, conn: sqlite3.Connection, now: datetime) -> list[SubjectInfo]:
        """Everyone, by name.

        Raises:
            TamperingError: a subject row or a consent record was edited outside consentmatch.
        """
        consents: dict[str, list[ConsentRecord]] = {}
        for record in self.consent_records(conn, now):
            consents.setdefault(record.subject, []).append(record)
        result = []
        for row in conn.execute(
            f"""SELECT {_SUBJECT_FIELDS}, s.mac, (SELECT count(*) FROM templates t WHERE t.subject_id = s.id)
                FROM subjects s ORDER BY s.name"""
        ):
            if not self._holds(_subject_content(row), row[7]):
                raise self._tampered(f"the subject '{row[1]}'")
            name, created, count = row[1], row[2], row[8]
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

    def retention(self, conn: sqlite3.Connection) -> list[tuple[int, str, int, datetime | None, str]]:
        """(subject id, name, templates, destroy_by, rule) of subjects that hold templates.

        Raises:
            TamperingError: a subject row was edited outside consentmatch.
        """
        rows = conn.execute(
            f"""SELECT {_SUBJECT_FIELDS}, s.mac, count(t.id)
                FROM subjects s JOIN templates t ON t.subject_id = s.id GROUP BY s.id ORDER BY s.name"""
        ).fetchall()
        for row in rows:
            if not self._holds(_subject_content(row), row[7]):
                raise self._tampered(f"the subject '{row[1]}'")
        return [(int(row[0]), str(row[1]), int(row[8]), _dt(row[5]), str(row[6] or "")) for row in rows]

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
        return {key: stored.get(key, default) for key, default in default_policy(Settings.from_env().quality).items()}

    @staticmethod
    def set_policy(conn: sqlite3.Connection, key: str, value: Any) -> None:
        conn.execute(
            "INSERT INTO policy (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    @staticmethod
    def optout_salt(conn: sqlite3.Connection) -> str | None:
        """The salt of e-mail hashes made before migration 5, while any is stored (see `email_hashes`)."""
        row = conn.execute("SELECT value FROM meta WHERE key = 'optout_salt'").fetchone()
        return None if row is None else str(row[0])

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
    def is_opted_out(conn: sqlite3.Connection, subject: str, email_hashes: Sequence[str]) -> bool:
        """`email_hashes`: every hash of the e-mail (see `email_hashes`), or none."""
        row = conn.execute(
            f"""SELECT 1 FROM optouts WHERE (kind = 'subject' AND value = ?)
                 OR (kind = 'email' AND value IN ({','.join('?' * len(email_hashes))}))""",
            (subject, *email_hashes),
        ).fetchone()
        return row is not None

    @staticmethod
    def subjects_with_email(conn: sqlite3.Connection, email_hashes: Sequence[str]) -> list[str]:
        rows = conn.execute(
            f"""SELECT DISTINCT s.name FROM consents c JOIN subjects s ON s.id = c.subject_id
                WHERE c.email_hash IN ({','.join('?' * len(email_hashes))}) ORDER BY s.name""",
            tuple(email_hashes),
        )
        return [str(r[0]) for r in rows]
