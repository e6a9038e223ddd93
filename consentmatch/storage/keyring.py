"""Template encryption: a gallery key outside the gallery, and one data key per subject.

Layout (all outside the gallery file):
    gallery key (KEK)  CONSENTMATCH_KEY (64 hex digits), else the file CONSENTMATCH_KEY_FILE,
                       else <key dir>/<gallery id>.key, created with the gallery (mode 0600)
    data keys (DEKs)   <key dir>/<gallery id>.deks, an SQLite file of per-subject keys, each
                       wrapped (AES-256-GCM) by the gallery key
    key dir            CONSENTMATCH_KEY_DIR, else $XDG_DATA_HOME/consentmatch/keys
                       (~/.local/share/consentmatch/keys)

Each template is sealed with its subject's data key (AES-256-GCM, a random 96-bit nonce; as
associated data the gallery id, the subject's id, name and key id, and the template's id: see
storage/sqlite_integrity.py). Erasing a subject deletes its data key: a copy of the
gallery file restored from before the erasure can no longer be decrypted for that subject
(crypto-shredding). The index snapshot (`search/snapshot.py`) has data keys of its own, ids starting
with `index-`, which every erasure deletes with the subject's. One more key, `mac-1`, is the
gallery's MAC key: it authenticates the subject and consent rows and keys the e-mail hashes
(storage/sqlite_integrity.py); it is wrapped and rotated like a data key, and never shredded.
Each live API key has one too, `apikey-<key id>`, shredded by its revocation (sqlite_access.py).

This module is the ring: the gallery key (found, checked, rotated) and the data keys (made,
unwrapped, shredded). The key file is read by keyfiles.py; the data-key store's tables, its
SQLite file and the key ids' kinds are keystore.py's.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..crypto import KEY_BYTES, aead, parse_key, seal, unseal, unseal_with, write_private
from ..errors import EncryptionKeyError
from ..settings import KeySource, Settings, key_source
from .keyfiles import read_key_file
from .keystore import (
    API_KEY_PREFIX, INDEX_KEY_PREFIX, INSERT_META, MAC_KEY_ID, MAC_KEY_PREFIX, NOT_SUBJECTS, REQUEST_KEY_PREFIX,
    UPSERT_META, KeyDb, meta_text, open_deks_file,
)

# The key ids' kinds and the store's connection (keystore.py) are imported from here too.
__all__ = ["API_KEY_PREFIX", "INDEX_KEY_PREFIX", "MAC_KEY_ID", "KeyDb", "KeyRing"]

_CHECK = b"consentmatch gallery key check"


class KeyRing:
    """The gallery key and the per-subject data keys of one gallery.

    Args:
        key: the gallery key itself (32 bytes or 64 hex digits); None: as the settings say
            (`settings.key_source`: CONSENTMATCH_KEY, CONSENTMATCH_KEY_FILE, or the key file).
        key_dir: where key files live; None: the settings' (CONSENTMATCH_KEY_DIR or the user data folder).
        settings: None: `Settings.from_env()`.
    """

    def __init__(
        self, key: bytes | str | None = None, key_dir: str | os.PathLike[str] | None = None,
        settings: Settings | None = None,
    ) -> None:
        self._given = parse_key(key, "the `key` argument") if key is not None else None
        self._settings = (settings or Settings.from_env()).replace(key_dir=Path(key_dir) if key_dir is not None else None)
        assert self._settings.key_dir is not None
        self.key_dir: Path = self._settings.key_dir
        self._lock = threading.RLock()
        self._kek: bytes | None = None
        self._deks: dict[str, bytes] = {}
        self._thread = threading.local()  # .unsaved: subject keys made in this thread's `deferred()` block
        self._conn: KeyDb | None = None
        self._remote: Callable[[], KeyDb] | None = None  # another data-key store than the `.deks` file
        self.keys_at: str | None = None  # where `_remote` keeps the data keys, as said in messages and `key info`
        self._check: bytes | None = None  # the key check `_kek` opened: another one means the key was rotated
        self.gallery_id: str | None = None
        #: The key file this ring created (a gallery's first write), for the caller to say once
        #: that it must be backed up apart from the gallery; None when it found one.
        self.created_key_file: Path | None = None

    # -- opening ---------------------------------------------------------------------------

    def keep_keys_in(self, connect: Callable[[], KeyDb], where: str) -> None:
        """Keep the data keys in the store `connect` opens (a gallery on a server: its keys
        database, `storage/postgres.py`) instead of the `.deks` file in the key folder."""
        self._remote, self.keys_at = connect, where

    def open(self, gallery_id: str, *, created: bool, create: bool) -> bool:
        """Load the gallery key and the data-key store; returns True when it creates them.

        `created`: the gallery says its keys exist. The key check lives in the data-key store,
        in the same transaction as every re-wrap, so a rotation cut short is finished here
        from the `.next` key file it writes first, and a `.next` left by a rotation that never
        committed is removed (`_sync`).

        Raises:
            EncryptionKeyError: the key or the data-key store is missing, or the key is wrong.
        """
        with self._lock:
            if self._kek is not None and self.gallery_id == gallery_id:
                return False
            self.gallery_id = gallery_id
            deks = self.key_dir / f"{gallery_id}.deks"
            if not created:
                if not create:
                    raise EncryptionKeyError("This gallery has no keys: it was not written by consentmatch.")
                self._kek = self._load_kek(gallery_id, create=True)
                self._open_deks(deks)
                self._check = seal(self._kek, _CHECK, gallery_id.encode())
                self._db().execute(UPSERT_META, ("check", self._check))
                return True
            if self._remote is None and not deks.exists():
                raise EncryptionKeyError(
                    f"The data keys of this gallery are missing ({deks}): set CONSENTMATCH_KEY_DIR to the folder "
                    "that holds them, or restore it from your key backup."
                )
            self._open_deks(deks)
            assert self._conn is not None
            if self._remote is not None and self._conn.execute("SELECT 1 FROM meta WHERE key = 'check'").fetchone() is None:
                self._conn.close()
                self._conn = None
                raise EncryptionKeyError(
                    f"The data keys of this gallery are missing ({self.keys_at}): restore them from your key backup."
                )
            try:
                pending = self._pending()
                if pending is not None and pending.exists():  # a rotation cut short: settled under the store's lock
                    with self._write():
                        pass
                else:
                    row = self._conn.execute("SELECT value FROM meta WHERE key = 'check'").fetchone()
                    check = bytes(row[0]) if row else b""
                    self._kek, self._check = self._finish_rotation(check), check
            except BaseException:
                self._conn.close()
                self._conn, self._kek, self._check = None, None, None
                raise
            return False

    @contextmanager
    def _write(self) -> Iterator[KeyDb]:
        """A write transaction of the data-key store, whose gallery key is made current first (`_sync`).

        Every wrap of a data key and every move of a key file happens inside one: the store's
        lock orders them against rotations in every process. Inside a transaction the caller
        opened on the store (a bulk load), a savepoint of it: the check is read in the same
        transaction as the write either way.
        """
        conn = self._conn
        if conn is None:
            raise EncryptionKeyError("The gallery's keys are not open.")
        nested = conn.in_transaction
        conn.execute("SAVEPOINT key_write" if nested else "BEGIN IMMEDIATE")
        try:
            self._sync(conn)
            yield conn
            conn.execute("RELEASE key_write" if nested else "COMMIT")
        except BaseException:
            if nested:
                conn.execute("ROLLBACK TO key_write")
                conn.execute("RELEASE key_write")
            elif conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _sync(self, conn: KeyDb) -> None:
        """Under the store's write lock: make `_kek` the gallery key that opens the key check now.

        Another process (or another KeyRing) may have rotated the key since this one loaded it:
        the stored check then differs from the one `_kek` opened, and the key is looked up again
        (`_finish_rotation`). A `.next` key file is settled: adopted when it opens the check (a
        rotation stopped after its commit), removed otherwise (one stopped before its commit:
        rotations write `.next` only under this lock, so none is under way).
        """
        row = conn.execute("SELECT value FROM meta WHERE key = 'check'").fetchone()
        check = bytes(row[0]) if row else b""
        if self._kek is None or check != self._check:
            self._kek, self._check = self._finish_rotation(check), check
        pending = self._pending()
        if pending is None or not pending.exists():
            return
        try:
            fresh: bytes | None = parse_key(read_key_file(pending), str(pending))
        except EncryptionKeyError:
            fresh = None
        if fresh is not None and unseal(fresh, check, (self.gallery_id or "").encode()) == _CHECK:
            assert self.key_file is not None
            os.replace(pending, self.key_file)
        else:
            pending.unlink()

    def _pending(self) -> Path | None:
        """`<key file>.next`: where a rotation writes the new key before it re-wraps."""
        return self.key_file.with_name(self.key_file.name + ".next") if self.key_file else None

    def _finish_rotation(self, check: bytes) -> bytes:
        """The gallery key that opens `check`: the one in memory, its source's (the key file, which
        another process may have rotated), or the successor in `<key file>.next` that a rotation
        stopped after its commit left (`_sync` then moves it in place). Otherwise the key is wrong.
        """
        aad = (self.gallery_id or "").encode()
        if self._kek is not None and unseal(self._kek, check, aad) == _CHECK:
            return self._kek
        kek = self._load_kek(self.gallery_id or "", create=False)
        if unseal(kek, check, aad) == _CHECK:
            return kek
        pending = self._pending()
        if pending is not None and pending.exists():
            fresh = parse_key(read_key_file(pending), str(pending))
            if unseal(fresh, check, aad) == _CHECK:
                return fresh
        if self._check is not None:  # it opened the gallery before: another process rotated the key since
            raise EncryptionKeyError(
                f"The gallery key was rotated by another process, and the key this gallery was opened with "
                f"({self.source}) no longer opens it: nothing was written; open the gallery again with the new key."
            )
        kind = self._source(self.gallery_id).kind
        fix = {
            "argument": "pass the key it was created with as Gallery(key=...)",
            "CONSENTMATCH_KEY": "set CONSENTMATCH_KEY to the key it was created with",
        }.get(kind, "set CONSENTMATCH_KEY_FILE (or CONSENTMATCH_KEY) to the key it was created with")
        raise EncryptionKeyError(f"The gallery key ({self.source}) does not open this gallery: {fix}.")

    def _source(self, gallery_id: str | None) -> KeySource:
        return key_source(self._settings, self._given, gallery_id)

    def _load_kek(self, gallery_id: str, *, create: bool) -> bytes:
        source = self._source(gallery_id)
        if source.key is not None:
            return source.key if isinstance(source.key, bytes) else parse_key(source.key, source.kind)
        named = source.kind == "named file"
        assert source.path is not None
        path = source.path
        if path.exists():
            return parse_key(read_key_file(path), str(path))
        if create and not named:
            key = secrets.token_bytes(KEY_BYTES)
            if write_private(path, key.hex().encode(), exclusive=True):
                self.created_key_file = path
                return key
            return parse_key(read_key_file(path), str(path))  # another process created it first
        raise EncryptionKeyError(
            f"The gallery key was not found ({path}): set CONSENTMATCH_KEY or CONSENTMATCH_KEY_FILE, "
            "or CONSENTMATCH_KEY_DIR to the folder that holds it."
        )

    def _open_deks(self, path: Path) -> None:
        self._conn = self._remote() if self._remote is not None else open_deks_file(path)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn, self._kek, self._check, self.gallery_id = None, None, None, None
            self._deks.clear()

    # -- data keys -------------------------------------------------------------------------

    def _db(self) -> KeyDb:
        if self._conn is None or self._kek is None:
            raise EncryptionKeyError("The gallery's keys are not open.")
        return self._conn

    def new_subject_key(self) -> str:
        """Create and store a data key for a new subject; returns its id (committed at once, or at
        the end of the `deferred()` block it is made in)."""
        unsaved: dict[str, bytes] | None = getattr(self._thread, "unsaved", None)
        if unsaved is None:
            return self._new_key(secrets.token_hex(16))
        with self._lock:
            self._db()
            key_id = secrets.token_hex(16)
            unsaved[key_id] = self._deks[key_id] = secrets.token_bytes(KEY_BYTES)
            return key_id

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Store the subject keys this thread makes inside in one key-store write as the block
        ends, or none when it raises.

        A gallery write transaction runs inside one (`Store.write`), so a batch of new subjects
        costs one key-store commit, not one each, and their keys are stored before the rows that
        use them commit. A key stored for rows that then fail to commit is an unused key, as when
        a process dies between the two commits. Nested blocks belong to the outermost.
        """
        if getattr(self._thread, "unsaved", None) is not None:
            yield
            return
        unsaved: dict[str, bytes] = {}
        self._thread.unsaved = unsaved
        try:
            yield
            if unsaved:
                with self._lock, self._write() as conn:  # wrapped under the key current now (`_sync`)
                    assert self._kek is not None
                    kek = self._kek
                    conn.executemany("INSERT INTO deks (key_id, wrapped) VALUES (?, ?)",
                                     [(k, seal(kek, dek, k.encode())) for k, dek in unsaved.items()])
        except BaseException:
            with self._lock:
                for key_id in unsaved:
                    self._deks.pop(key_id, None)
            raise
        finally:
            self._thread.unsaved = None

    def new_index_key(self) -> tuple[str, bytes]:
        """Create and store a data key for an index snapshot; returns its id and the key."""
        key_id = self._new_key(INDEX_KEY_PREFIX + secrets.token_hex(16))
        return key_id, self._deks[key_id]

    def new_request_key(self) -> str:
        """Create and store a data key for a probe held until its request is decided; returns its id."""
        return self._new_key(REQUEST_KEY_PREFIX + secrets.token_hex(16))

    def _new_key(self, key_id: str) -> str:
        """Wrap a new data key under the gallery key that is current in the same transaction: one
        loaded before another process rotated it would wrap a key that no longer opens anything."""
        with self._lock:
            dek = secrets.token_bytes(KEY_BYTES)
            self._db()
            with self._write() as conn:
                assert self._kek is not None
                conn.execute("INSERT INTO deks (key_id, wrapped) VALUES (?, ?)", (key_id, seal(self._kek, dek, key_id.encode())))
            self._deks[key_id] = dek
            return key_id

    def new_api_key_mark(self, key_id: str) -> None:
        """Store the mark of a new live API key (a data key nothing is sealed under): `revoke`
        shreds it, so the key's row rolled back to before its revocation no longer counts as live."""
        self.mark_api_keys([key_id])

    def mark_api_keys(self, key_ids: list[str]) -> None:
        """Store the marks of live API keys that have none yet (a gallery from before the marks)."""
        with self._lock:
            self._db()
            with self._write() as conn:
                assert self._kek is not None
                kek = self._kek
                rows = [(API_KEY_PREFIX + k, seal(kek, secrets.token_bytes(KEY_BYTES), (API_KEY_PREFIX + k).encode()))
                        for k in key_ids]
                conn.executemany("INSERT INTO deks (key_id, wrapped) VALUES (?, ?) ON CONFLICT (key_id) DO NOTHING", rows)

    def api_key_live(self, key_id: str) -> bool:
        """Whether an API key's mark exists (read from the key store each time, never cached: another
        process may have revoked the key)."""
        with self._lock:
            row = self._db().execute("SELECT 1 FROM deks WHERE key_id = ?", (API_KEY_PREFIX + key_id,)).fetchone()
            return row is not None

    def api_keys_marked(self) -> bool:
        """Whether the live API keys of this gallery were given their marks (`mark_api_keys`, once per key store)."""
        with self._lock:
            return self._db().execute("SELECT 1 FROM meta WHERE key = 'api_keys_marked'").fetchone() is not None

    def set_api_keys_marked(self) -> None:
        with self._lock:
            self._db().execute(INSERT_META, ("api_keys_marked", b"1"))

    def data_key(self, key_id: str) -> bytes | None:
        """The subject's data key, or None once shredded."""
        with self._lock:
            if key_id not in self._deks:
                for retry in (False, True):
                    row = self._db().execute("SELECT wrapped FROM deks WHERE key_id = ?", (key_id,)).fetchone()
                    if row is None:
                        return None
                    assert self._kek is not None
                    dek = unseal(self._kek, bytes(row[0]), key_id.encode())
                    if dek is not None:
                        break
                    if retry or not self._rotated():
                        raise EncryptionKeyError(f"The data key {key_id[:8]}... does not open with this gallery key.")
                assert dek is not None
                self._deks[key_id] = dek
            return self._deks[key_id]

    def load_all(self) -> None:
        """Unwrap every data key at once: one query and one gallery-key cipher, not one per subject."""
        with self._lock:
            for retry in (False, True):
                assert self._kek is not None
                cipher = aead(self._kek)
                failed = None
                for key_id, wrapped in self._db().execute("SELECT key_id, wrapped FROM deks").fetchall():
                    if key_id not in self._deks:
                        dek = unseal_with(cipher, bytes(wrapped), str(key_id).encode())
                        if dek is None:
                            failed = str(key_id)
                            break
                        self._deks[str(key_id)] = dek
                if failed is None:
                    return
                if retry or not self._rotated():
                    raise EncryptionKeyError(f"The data key {failed[:8]}... does not open with this gallery key.")

    def _rotated(self) -> bool:
        """After a data key failed to unwrap: whether another process rotated the gallery key
        since this ring loaded it (then the current key is loaded, to try again)."""
        row = self._db().execute("SELECT value FROM meta WHERE key = 'check'").fetchone()
        if row is None or bytes(row[0]) == self._check:
            return False
        with self._write():
            pass
        return True

    def key_ids(self) -> set[str]:
        """The subjects' data key ids."""
        with self._lock:
            return {str(r[0]) for r in self._db().execute("SELECT key_id FROM deks")
                    if not str(r[0]).startswith(NOT_SUBJECTS)}

    def index_key_ids(self) -> set[str]:
        """The index snapshots' data key ids (normally one, none after an erasure)."""
        with self._lock:
            # A range on the primary key ('-' + 1 is '.'): no scan of every subject's key.
            rows = self._db().execute("SELECT key_id FROM deks WHERE key_id >= ? AND key_id < ?",
                                      (INDEX_KEY_PREFIX, INDEX_KEY_PREFIX[:-1] + "."))
            return {str(r[0]) for r in rows}

    def shred(self, key_ids: list[str]) -> None:
        """Destroy data keys for good, all or none: what they sealed can no longer be read, in any copy.

        Shredding a subject's key also renews the shred stamp (`shred_stamp`).
        """
        key_ids = [k for k in key_ids if not k.startswith(MAC_KEY_PREFIX)]  # a forged subject key id cannot name it
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("DELETE FROM deks WHERE key_id = ?", [(k,) for k in key_ids])
                if any(not k.startswith(NOT_SUBJECTS) for k in key_ids):
                    conn.execute(UPSERT_META, ("shred_stamp", secrets.token_hex(16).encode()))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            for key_id in key_ids:
                self._deks.pop(key_id, None)

    def shred_stamp(self) -> str:
        """A random value renewed whenever a subject's key is shredded: a gallery that recorded the
        current stamp holds no row of a shredded key, so its open need not look for one."""
        with self._lock:
            conn = self._db()
            row = conn.execute("SELECT value FROM meta WHERE key = 'shred_stamp'").fetchone()
            if row is None:  # a key store from before the stamp
                conn.execute(INSERT_META, ("shred_stamp", secrets.token_hex(16).encode()))
                row = conn.execute("SELECT value FROM meta WHERE key = 'shred_stamp'").fetchone()
            return meta_text(row[0])

    def seal_template(self, key_id: str, plaintext: bytes, aad: bytes) -> bytes:
        dek = self.data_key(key_id)
        if dek is None:
            raise EncryptionKeyError("This subject's data key was shredded: the subject was erased.")
        return seal(dek, plaintext, aad)

    def mac_key(self) -> bytes:
        """The gallery's MAC key (created on first use, once for every process): it authenticates
        rows of the gallery file and keys its e-mail hashes. Kept in the key store, wrapped by the
        gallery key, so a copy or a writer of the gallery file alone can neither forge nor reverse them."""
        with self._lock:
            if self.data_key(MAC_KEY_ID) is None:  # no write at all once it exists: a read-only key store works
                conn = self._db()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if conn.execute("SELECT 1 FROM deks WHERE key_id = ?", (MAC_KEY_ID,)).fetchone() is None:
                        self._check_current(conn)
                        assert self._kek is not None
                        wrapped = seal(self._kek, secrets.token_bytes(KEY_BYTES), MAC_KEY_ID.encode())
                        conn.execute("INSERT INTO deks (key_id, wrapped) VALUES (?, ?)", (MAC_KEY_ID, wrapped))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            key = self.data_key(MAC_KEY_ID)
            assert key is not None
            return key

    def _check_current(self, conn: KeyDb) -> None:
        """Refuse to wrap a key with a gallery key that another process has rotated away since the open."""
        row = conn.execute("SELECT value FROM meta WHERE key = 'check'").fetchone()
        assert self._kek is not None
        if row is None or unseal(self._kek, bytes(row[0]), (self.gallery_id or "").encode()) != _CHECK:
            raise EncryptionKeyError("The gallery key was rotated by another process meanwhile: open the gallery again.")

    def bound(self) -> bool:
        """Whether this gallery's rows were bound to the keys (templates' associated data, row MACs).

        Kept in the key store, not the gallery file, so a writer of the file alone cannot make
        the next open bind (and so vouch for) rows it forged.
        """
        with self._lock:
            return self._db().execute("SELECT 1 FROM meta WHERE key = 'bound'").fetchone() is not None

    def set_bound(self) -> None:
        with self._lock:
            self._db().execute(INSERT_META, ("bound", b"1"))

    def rotate(self, new_key: bytes | None = None, *, record: str | None = None) -> bytes:
        """Re-wrap every data key under a new gallery key; returns the new key.

        Crash-safe: a key file's successor is written first (`<key file>.next`), then the
        re-wrapped keys and the new check commit together, then the successor replaces the
        key file; `open` finishes a rotation cut short. All of it holds the data-key store's
        write lock, with the current key reloaded first (`_sync`), so it is safe against
        rotations and new data keys in other processes. A key held by the caller (argument or
        CONSENTMATCH_KEY) must be given as `new_key`, stored by the caller beforehand.

        `record`: kept in the store, committed with the rotation, until `rotation_recorded`
        clears it: the caller's audit event, which a crash between the two commits cannot lose.

        Raises:
            EncryptionKeyError: a caller-held key without `new_key`; a data key that does not open.
        """
        with self._lock:
            self._db()
            assert self.gallery_id is not None
            if self.key_file is None and new_key is None:
                raise EncryptionKeyError(
                    "The gallery key is held by the caller: store a new one first (generate_key()), then pass it as new_key."
                )
            fresh = new_key or secrets.token_bytes(KEY_BYTES)
            with self._write() as conn:
                old, pending = self._kek, self._pending()
                assert old is not None
                if pending is not None:
                    write_private(pending, fresh.hex().encode())
                try:
                    for key_id, wrapped in conn.execute("SELECT key_id, wrapped FROM deks").fetchall():
                        dek = unseal(old, bytes(wrapped), str(key_id).encode())
                        if dek is None:
                            raise EncryptionKeyError(f"Data key {str(key_id)[:8]}... does not open: rotation stopped, nothing changed.")
                        conn.execute("UPDATE deks SET wrapped = ? WHERE key_id = ?", (seal(fresh, dek, str(key_id).encode()), key_id))
                    check = seal(fresh, _CHECK, self.gallery_id.encode())
                    conn.execute(UPSERT_META, ("check", check))
                    if record is not None:
                        conn.execute(UPSERT_META, ("unrecorded_rotation", record.encode()))
                except BaseException:
                    if pending is not None and pending.exists():
                        pending.unlink()
                    raise
            self._kek, self._check = fresh, check
            if pending is not None:
                try:
                    with self._write():  # moves `.next` over the key file
                        pass
                except (OSError, sqlite3.Error):
                    pass  # the rotation took effect: the next open or write finishes it from `.next`
            return fresh

    def unrecorded_rotation(self) -> str | None:
        """The `record` of a rotation not yet marked recorded (`rotate`), if any."""
        with self._lock:
            row = self._db().execute("SELECT value FROM meta WHERE key = 'unrecorded_rotation'").fetchone()
            return None if row is None else meta_text(row[0])

    def rotation_recorded(self, record: str) -> None:
        """The caller stored this rotation's record: forget it (a later rotation's stays). A store
        that cannot be written now keeps it; the caller's recording must be idempotent."""
        with self._lock, contextlib.suppress(sqlite3.OperationalError):
            self._db().execute("DELETE FROM meta WHERE key = 'unrecorded_rotation' AND value = ?", (record.encode(),))

    # -- copying a gallery (storage/transfer.py) ------------------------------------------------

    def wrapped_keys(self) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        """Every data key as stored (wrapped by the gallery key, never unwrapped here) and the key
        store's meta rows: what a copy of the gallery to another store takes along."""
        with self._lock:
            conn = self._db()
            deks = [(str(k), bytes(w)) for k, w in conn.execute("SELECT key_id, wrapped FROM deks ORDER BY key_id")]
            meta = [(str(k), bytes(v) if isinstance(v, (bytes, memoryview)) else str(v).encode())
                    for k, v in conn.execute("SELECT key, value FROM meta ORDER BY key")]
            return deks, meta

    def adopt(self, gallery_id: str, deks: list[tuple[str, bytes]], meta: list[tuple[str, bytes]]) -> None:
        """Fill this ring's (empty) data-key store for `gallery_id` with another store's wrapped keys, in
        one transaction; the ring is left closed (the copied gallery opens it as usual).

        Raises:
            EncryptionKeyError: the store holds data keys already.
        """
        with self._lock:
            self.close()
            self.gallery_id = gallery_id
            self._open_deks(self.key_dir / f"{gallery_id}.deks")
            conn = self._conn
            assert conn is not None
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if conn.execute("SELECT 1 FROM deks UNION ALL SELECT 1 FROM meta WHERE key = 'check'").fetchone():
                        raise EncryptionKeyError(
                            f"The data-key store of the copy ({self.keys_at or self.key_dir / f'{gallery_id}.deks'}) "
                            "holds keys already (of an earlier copy of this gallery): retire that copy and move "
                            "its key store away first, or copy to another key folder (CONSENTMATCH_KEY_DIR)."
                        )
                    conn.executemany("INSERT INTO deks (key_id, wrapped) VALUES (?, ?)", deks)
                    conn.executemany(UPSERT_META, meta)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            finally:
                self.close()

    @property
    def source(self) -> str:
        """Where the gallery key comes from: argument, CONSENTMATCH_KEY, or a key file."""
        return self._source(self.gallery_id).describe()

    @property
    def key_file(self) -> Path | None:
        """The file holding the gallery key, when it is a file (named, or the default one)."""
        return self._source(self.gallery_id).path
