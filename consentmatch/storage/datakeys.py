"""The data keys of one gallery: made (subjects', index snapshots', held probes'), unwrapped and
cached, shredded, and the gallery's MAC key (`mac-1`, made on first use, never shredded). Each is
wrapped by the gallery key under the key store's write lock (keycheck.py), so a key made while
another process rotates is wrapped under the key current then."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..crypto import KEY_BYTES, aead, seal, unseal, unseal_with
from ..errors import EncryptionKeyError
from .keycheck import KeyCore
from .keystore import (
    INDEX_KEY_PREFIX, INSERT_META, MAC_KEY_ID, MAC_KEY_PREFIX, NOT_SUBJECTS, REQUEST_KEY_PREFIX,
    UPSERT_META, meta_text,
)

__all__ = ["DataKeys"]


class DataKeys:
    """The data keys of a `KeyRing` (its core: the gallery key and the key store), unwrapped ones cached."""

    def __init__(self, ring: KeyCore) -> None:
        self._ring = ring
        self._deks: dict[str, bytes] = {}
        self._thread = threading.local()  # .unsaved: subject keys made in this thread's `deferred()` block

    def clear(self) -> None:
        """Forget every unwrapped key (the ring closed)."""
        self._deks.clear()

    def new_subject_key(self) -> str:
        """Create and store a data key for a new subject; returns its id (committed at once, or at
        the end of the `deferred()` block it is made in)."""
        unsaved: dict[str, bytes] | None = getattr(self._thread, "unsaved", None)
        if unsaved is None:
            return self._new_key(secrets.token_hex(16))
        with self._ring._lock:
            self._ring._db()
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
                with self._ring._lock, self._ring._write() as conn:  # wrapped under the key current now (`_sync`)
                    assert self._ring._kek is not None
                    kek = self._ring._kek
                    conn.executemany("INSERT INTO deks (key_id, wrapped) VALUES (?, ?)",
                                     [(k, seal(kek, dek, k.encode())) for k, dek in unsaved.items()])
        except BaseException:
            with self._ring._lock:
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
        with self._ring._lock:
            dek = secrets.token_bytes(KEY_BYTES)
            self._ring._db()
            with self._ring._write() as conn:
                assert self._ring._kek is not None
                conn.execute("INSERT INTO deks (key_id, wrapped) VALUES (?, ?)", (key_id, seal(self._ring._kek, dek, key_id.encode())))
            self._deks[key_id] = dek
            return key_id

    def data_key(self, key_id: str) -> bytes | None:
        """The subject's data key, or None once shredded."""
        with self._ring._lock:
            if key_id not in self._deks:
                for retry in (False, True):
                    row = self._ring._db().execute("SELECT wrapped FROM deks WHERE key_id = ?", (key_id,)).fetchone()
                    if row is None:
                        return None
                    assert self._ring._kek is not None
                    dek = unseal(self._ring._kek, bytes(row[0]), key_id.encode())
                    if dek is not None:
                        break
                    if retry or not self._ring._rotated():
                        raise EncryptionKeyError(f"The data key {key_id[:8]}... does not open with this gallery key.")
                assert dek is not None
                self._deks[key_id] = dek
            return self._deks[key_id]

    def load_all(self) -> None:
        """Unwrap every data key at once: one query and one gallery-key cipher, not one per subject."""
        with self._ring._lock:
            for retry in (False, True):
                assert self._ring._kek is not None
                cipher = aead(self._ring._kek)
                failed = None
                for key_id, wrapped in self._ring._db().execute("SELECT key_id, wrapped FROM deks").fetchall():
                    if key_id not in self._deks:
                        dek = unseal_with(cipher, bytes(wrapped), str(key_id).encode())
                        if dek is None:
                            failed = str(key_id)
                            break
                        self._deks[str(key_id)] = dek
                if failed is None:
                    return
                if retry or not self._ring._rotated():
                    raise EncryptionKeyError(f"The data key {failed[:8]}... does not open with this gallery key.")

    def key_ids(self) -> set[str]:
        """The subjects' data key ids."""
        with self._ring._lock:
            return {str(r[0]) for r in self._ring._db().execute("SELECT key_id FROM deks")
                    if not str(r[0]).startswith(NOT_SUBJECTS)}

    def index_key_ids(self) -> set[str]:
        """The index snapshots' data key ids (normally one, none after an erasure)."""
        with self._ring._lock:
            # A range on the primary key ('-' + 1 is '.'): no scan of every subject's key.
            rows = self._ring._db().execute("SELECT key_id FROM deks WHERE key_id >= ? AND key_id < ?",
                                      (INDEX_KEY_PREFIX, INDEX_KEY_PREFIX[:-1] + "."))
            return {str(r[0]) for r in rows}

    def shred(self, key_ids: list[str]) -> None:
        """Destroy data keys for good, all or none: what they sealed can no longer be read, in any copy.

        Shredding a subject's key also renews the shred stamp (`shred_stamp`).
        """
        key_ids = [k for k in key_ids if not k.startswith(MAC_KEY_PREFIX)]  # a forged subject key id cannot name it
        with self._ring._lock:
            conn = self._ring._db()
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
        with self._ring._lock:
            conn = self._ring._db()
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
        with self._ring._lock:
            if self.data_key(MAC_KEY_ID) is None:  # no write at all once it exists: a read-only key store works
                conn = self._ring._db()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if conn.execute("SELECT 1 FROM deks WHERE key_id = ?", (MAC_KEY_ID,)).fetchone() is None:
                        self._ring._check_current(conn)
                        assert self._ring._kek is not None
                        wrapped = seal(self._ring._kek, secrets.token_bytes(KEY_BYTES), MAC_KEY_ID.encode())
                        conn.execute("INSERT INTO deks (key_id, wrapped) VALUES (?, ?)", (MAC_KEY_ID, wrapped))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            key = self.data_key(MAC_KEY_ID)
            assert key is not None
            return key
