"""SQLite: the embedded gallery store, one file. Connection, schema steps, keys, transactions.

One connection per store, shared by threads under a lock: SQLite's own locking then keeps
several processes safe (WAL: readers never block the writer). Every write bumps `generation`
in the same transaction, so an index built from the store knows when it is stale, and after
its commit the store tells its listeners what templates the write added and deleted
(`Commit`): the one place the index learns that the store moved. The queries themselves are
`sqlite_rows.SqliteTransaction`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..crypto import unseal
from ..errors import GalleryNotFoundError, StorageError
from .base import Commit
from .dialect import SQLITE
from .keyring import KeyRing
from .lifecycle import StoreCore
from .migrations import APPLICATION_ID, MIGRATIONS, run_step
from .schema import render
from .sqlite_rows import SqliteTransaction

__all__ = ["SqliteStore"]

_PLAIN_BYTES = 512  # an unsealed template (schema 2 and older)
_BUSY_TIMEOUT_S = 30.0  # how long a call waits for another process's write before StorageError
_BIND_BATCH = 10_000  # templates re-sealed per query when a gallery is bound: memory stays flat at 1M


class SqliteStore(StoreCore[SqliteTransaction]):
    """The gallery's SQLite file. Opened lazily: reads of a missing file raise, the first write creates it.

    Args:
        path: the gallery file.
        keys: its key ring (storage/keyring.py).
        quality: the quality bar a gallery without one in its policy has (Settings.quality).
    """

    def __init__(self, path: Path, keys: KeyRing | None = None, *, quality: str | None = None) -> None:
        self.path = path
        self.keys = keys or KeyRing()
        self.quality = quality
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._listeners: list[Callable[[Commit], None]] = []

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
        """Open the gallery's keys; bind the rows of older schemas once; drop rows whose key was shredded.

        The two scans (~1 s at 1M templates) run only when the gallery's `keys_checked` differs
        from the key store's shred stamp: after a crash between an erasure's shred and its
        commit, in a restored backup, or in a gallery of an older schema. Plaintext rows are
        never written once a gallery is sealed, and every erasure records the stamp it leaves.
        Binding (`_bind`) happens once per key store, which records it: a writer of the file
        alone cannot ask for it again to have forged rows vouched for.
        """
        tx = SqliteTransaction(conn, self)
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('gallery_id', 'keys', 'keys_checked')").fetchall())
        created = self.keys.open(str(meta["gallery_id"]), created="keys" in meta, create=True)
        self._record_lost_rotation(conn)
        self.keys.mac_key()  # unwrapped (or created) now, under the key the open checked, not in a later write
        tx.mark_api_keys()
        stamp = self.keys.shred_stamp()
        bound = self.keys.bound()
        if bound and not created and meta.get("keys_checked") == stamp:
            return

        def shredded_subjects() -> list[tuple[int, str]]:
            known = self.keys.key_ids()
            return [(int(i), str(k)) for i, k in conn.execute("SELECT id, key_id FROM subjects WHERE key_id IS NOT NULL")
                    if k not in known]

        if bound and not created and not shredded_subjects():
            with contextlib.suppress(sqlite3.OperationalError):  # read-only: scan again next time
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('keys_checked', ?)", (stamp,))
            return
        removed: list[int] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = tx.generation()
            # Again under the write lock: a subject another process committed after the key ids
            # were read above has its key stored (keys go in before their rows commit), not shredded.
            shredded = shredded_subjects()
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('keys_checked', ?)", (stamp,))
            if created:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('keys', 'created')")
            binding = not bound and not self.keys.bound()  # another process may have bound it meanwhile
            for subject_id, _ in shredded:  # e.g. a backup restored after an erasure: those rows stay dead
                removed.extend(tx.drop_shredded(subject_id, renew=not binding))
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
        if shredded or resealed:  # the listeners hear of it, as of any write that moves the generation
            self._tell(before, [], removed)
        if resealed:
            self.checkpoint()

    def _record_lost_rotation(self, conn: sqlite3.Connection) -> None:
        """Record a key rotation whose audit event was lost (its process stopped between the key
        store's commit and the gallery's). A gallery that cannot be written now leaves it for later."""
        event = self.keys.unrecorded_rotation()
        if event is None:
            return
        tx = SqliteTransaction(conn, self)
        with contextlib.suppress(sqlite3.OperationalError):
            conn.execute("BEGIN IMMEDIATE")
            try:
                tx.record_rotation(event)
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
        tx = SqliteTransaction(conn, self)
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
                    key_id, plain = tx._subject_key(int(subject_id)), bytes(blob)
                else:
                    dek = self.keys.data_key(str(key_id)) if key_id is not None else None
                    plain = unseal(dek, bytes(blob), str(key_id).encode()) if dek is not None else None
                    if plain is None:
                        continue
                aad = tx._binding(int(subject_id), str(name), str(key_id)) + str(template_id).encode()
                conn.execute("UPDATE templates SET embedding = ? WHERE id = ?",
                             (self.keys.seal_template(str(key_id), plain, aad), template_id))
                resealed += 1
        for (subject_id,) in conn.execute("SELECT id FROM subjects").fetchall():
            tx.seal_subject(int(subject_id))
        for (consent_id,) in conn.execute("SELECT id FROM consents").fetchall():
            tx.seal_consent(int(consent_id))
        return resealed

    @contextmanager
    def loading(self) -> Iterator[sqlite3.Connection]:
        """A new gallery file with its schema but no keys, for a copy to fill in one transaction
        (storage/transfer.py); the file is removed if the copy fails.

        Raises:
            StorageError: the file exists already.
        """
        with self._lock, self._mapped():
            if self.path.exists():
                raise StorageError(f"'{self.path}' exists already: name a new gallery file to copy to.")
            self._check_regular(create=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S)
            try:
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("PRAGMA journal_mode = WAL")
                self._migrate(conn)
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.close()
                for leftover in (self.path, self.path.with_name(self.path.name + "-wal"), self.path.with_name(self.path.name + "-shm")):
                    leftover.unlink(missing_ok=True)
                raise
            conn.close()

    def checkpoint(self) -> None:
        """Copy the WAL into the database now. PASSIVE: an erasure never waits on readers; pages a
        reader still holds stay in the WAL, sealed under a key that no longer exists."""
        with self._lock, self._mapped():
            if self._conn is not None:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _check_owner(self, conn: sqlite3.Connection) -> None:
        # One statement, one snapshot: another process may be creating this very gallery.
        app_id, tables = conn.execute(
            "SELECT (SELECT application_id FROM pragma_application_id()), (SELECT count(*) FROM sqlite_master)"
        ).fetchone()
        if app_id != APPLICATION_ID and (app_id != 0 or tables):
            raise StorageError(f"'{self.path}' is an SQLite file but not a consentmatch gallery: name another file.")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Create a new gallery from the table spec (schema.py), or bring an older one up to it by
        the missing steps, each in one transaction that also re-reads the version, so two
        processes creating the same gallery at once cannot both run a step."""
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
                    reached = version + 1
                    if version == 0:  # a new gallery: the spec's tables at once (`_check_owner`: the file is empty)
                        for statement in render(SQLITE):
                            conn.execute(statement)
                        reached = len(MIGRATIONS)
                    else:
                        run_step(conn, MIGRATIONS[version])
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {reached}")
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
    def read(self) -> Iterator[SqliteTransaction]:
        """A consistent snapshot for several queries."""
        with self._lock, self._mapped():
            conn = self._connect(create=False)
            conn.execute("BEGIN")
            try:
                yield SqliteTransaction(conn, self)
            finally:
                conn.execute("COMMIT")

    # -- the write sequence's hooks (storage/lifecycle.py) ---------------------------------------

    def _turn(self) -> threading.RLock:
        return self._lock  # the one connection's; listeners hear of commits in their order

    @contextmanager
    def _writer(self, create: bool) -> Iterator[sqlite3.Connection]:
        yield self._connect(create=create)

    def _begin(self, conn: sqlite3.Connection) -> tuple[SqliteTransaction, int]:
        conn.execute("BEGIN IMMEDIATE")
        tx = SqliteTransaction(conn, self)
        return tx, tx.generation()

    def _move(self, tx: SqliteTransaction, after: int) -> None:
        tx.conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:  # SQLite rolls back by itself on some errors (disk full)
            conn.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self.keys.close()
