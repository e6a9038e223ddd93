"""Rotating the gallery key (every data key re-wrapped, crash-safely, with the caller's audit
record kept until it is stored), and a gallery's wrapped keys taken to another key store (a copy,
storage/transfer.py, `adopt`)."""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from pathlib import Path

from ..crypto import KEY_BYTES, seal, unseal, write_private
from ..errors import EncryptionKeyError
from .keycheck import CHECK, KeyCore
from .keyfiles import read_key_file
from .keystore import (
    UPSERT_META, meta_text,
)

__all__ = ["Rotation"]


class Rotation:
    """Rotation and adoption of a `KeyRing`'s keys, under its key store's write lock (keycheck.py)."""

    def __init__(self, ring: KeyCore) -> None:
        self._ring = ring

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
        with self._ring._lock:
            self._ring._db()
            assert self._ring.gallery_id is not None
            if self._ring.key_file is None and new_key is None:
                raise EncryptionKeyError(
                    "The gallery key is held by the caller: store a new one first (generate_key()), then pass it as new_key."
                )
            fresh = new_key or secrets.token_bytes(KEY_BYTES)
            with self._ring._write() as conn:
                old, pending = self._ring._kek, self._ring._pending()
                assert old is not None
                if pending is not None:
                    write_private(pending, fresh.hex().encode())
                try:
                    for key_id, wrapped in conn.execute("SELECT key_id, wrapped FROM deks").fetchall():
                        dek = unseal(old, bytes(wrapped), str(key_id).encode())
                        if dek is None:
                            raise EncryptionKeyError(f"Data key {str(key_id)[:8]}... does not open: rotation stopped, nothing changed.")
                        conn.execute("UPDATE deks SET wrapped = ? WHERE key_id = ?", (seal(fresh, dek, str(key_id).encode()), key_id))
                    check = seal(fresh, CHECK, self._ring.gallery_id.encode())
                    conn.execute(UPSERT_META, ("check", check))
                    if record is not None:
                        conn.execute(UPSERT_META, ("unrecorded_rotation", record.encode()))
                except BaseException:
                    if pending is not None and pending.exists():
                        pending.unlink()
                    raise
            self._ring._kek, self._ring._check = fresh, check
            if pending is not None:
                try:
                    with self._ring._write():  # moves `.next` over the key file
                        pass
                except (OSError, sqlite3.Error):
                    pass  # the rotation took effect: the next open or write finishes it from `.next`
            return fresh

    def unrecorded_rotation(self) -> str | None:
        """The `record` of a rotation not yet marked recorded (`rotate`), if any."""
        with self._ring._lock:
            row = self._ring._db().execute("SELECT value FROM meta WHERE key = 'unrecorded_rotation'").fetchone()
            return None if row is None else meta_text(row[0])

    def rotation_recorded(self, record: str) -> None:
        """The caller stored this rotation's record: forget it (a later rotation's stays). A store
        that cannot be written now keeps it; the caller's recording must be idempotent."""
        with self._ring._lock, contextlib.suppress(sqlite3.OperationalError):
            self._ring._db().execute("DELETE FROM meta WHERE key = 'unrecorded_rotation' AND value = ?", (record.encode(),))

    def wrapped_keys(self) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        """Every data key as stored (wrapped by the gallery key, never unwrapped here) and the key
        store's meta rows: what a copy of the gallery to another store takes along."""
        with self._ring._lock:
            conn = self._ring._db()
            deks = [(str(k), bytes(w)) for k, w in conn.execute("SELECT key_id, wrapped FROM deks ORDER BY key_id")]
            meta = [(str(k), bytes(v) if isinstance(v, (bytes, memoryview)) else str(v).encode())
                    for k, v in conn.execute("SELECT key, value FROM meta ORDER BY key")]
            return deks, meta

    def adopt(self, gallery_id: str, deks: list[tuple[str, bytes]], meta: list[tuple[str, bytes]],
              key_file: Path | None = None) -> None:
        """Fill this ring's (empty) data-key store for `gallery_id` with another store's wrapped keys, in
        one transaction; the ring is left closed (the copied gallery opens it as usual). `key_file`:
        the source's gallery key file, copied (0600) to this ring's key folder when the ring looks
        for its key there and finds none, so the same key opens the copy.

        Raises:
            EncryptionKeyError: the store holds data keys already, or the key file cannot be read.
        """
        with self._ring._lock:
            self._ring.close()
            mine = self._ring._key.source(gallery_id).path
            if key_file is not None and mine is not None and not mine.exists():
                write_private(mine, read_key_file(key_file), exclusive=True)
            self._ring.gallery_id = gallery_id
            self._ring._open_deks(self._ring.key_dir / f"{gallery_id}.deks")
            conn = self._ring._conn
            assert conn is not None
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if conn.execute("SELECT 1 FROM deks UNION ALL SELECT 1 FROM meta WHERE key = 'check'").fetchone():
                        raise EncryptionKeyError(
                            f"The data-key store of the copy ({self._ring.keys_at or self._ring.key_dir / f'{gallery_id}.deks'}) "
                            "holds keys already (of an earlier copy of this gallery): retire that copy and move "
                            "its key store away first, or give this copy a key folder of its own (consentmatch copy --key-dir DIR)."
                        )
                    conn.executemany("INSERT INTO deks (key_id, wrapped) VALUES (?, ?)", deks)
                    conn.executemany(UPSERT_META, meta)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            finally:
                self._ring.close()
