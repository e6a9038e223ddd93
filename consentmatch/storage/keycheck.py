"""The open key ring's core: the gallery key checked against the data-key store, and the
store's write transaction, in which every wrap of a data key and every move of a key file
happens (so a rotation in another process is seen first, `_sync`).

The check (`CHECK` sealed under the gallery key, in the store's meta table) lives in the same
transaction as every re-wrap: a rotation cut short is finished at the next open from the
`.next` key file it writes first (gallerykey.py), and one that never committed is undone.
The ring's other jobs are collaborators over this core: datakeys.py, keyrotation.py,
apikeymarks.py; keyring.py puts them together.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..crypto import parse_key, seal, unseal
from ..errors import EncryptionKeyError
from ..settings import Settings
from .gallerykey import GalleryKey
from .keyfiles import read_key_file
from .keystore import INSERT_META, UPSERT_META, KeyDb, open_deks_file

__all__ = ["CHECK", "KeyCore"]

#: What the gallery key seals as its check (associated data: the gallery id).
CHECK = b"consentmatch gallery key check"


class KeyCore:
    """The gallery key and the data-key store of one gallery, opened and kept current.

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
        given = parse_key(key, "the `key` argument") if key is not None else None
        resolved = (settings or Settings.from_env()).replace(key_dir=Path(key_dir) if key_dir is not None else None)
        assert resolved.key_dir is not None
        self.key_dir: Path = resolved.key_dir
        self._key = GalleryKey(given, resolved)
        self._lock = threading.RLock()
        self._kek: bytes | None = None
        self._conn: KeyDb | None = None
        self._remote: Callable[[], KeyDb] | None = None  # another data-key store than the `.deks` file
        self.keys_at: str | None = None  # where `_remote` keeps the data keys, as said in messages and `key info`
        self._check: bytes | None = None  # the key check `_kek` opened: another one means the key was rotated
        self.gallery_id: str | None = None

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
                self._kek = self._key.load(gallery_id, create=True)
                self._open_deks(deks)
                self._check = seal(self._kek, CHECK, gallery_id.encode())
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
        if fresh is not None and unseal(fresh, check, (self.gallery_id or "").encode()) == CHECK:
            assert self.key_file is not None
            os.replace(pending, self.key_file)
        else:
            pending.unlink()

    def _pending(self) -> Path | None:
        return self._key.pending(self.gallery_id)

    def _finish_rotation(self, check: bytes) -> bytes:
        """The gallery key that opens `check`: the one in memory, its source's (the key file, which
        another process may have rotated), or the successor in `<key file>.next` that a rotation
        stopped after its commit left (`_sync` then moves it in place). Otherwise the key is wrong.
        """
        aad = (self.gallery_id or "").encode()
        if self._kek is not None and unseal(self._kek, check, aad) == CHECK:
            return self._kek
        kek = self._key.load(self.gallery_id or "", create=False)
        if unseal(kek, check, aad) == CHECK:
            return kek
        pending = self._pending()
        if pending is not None and pending.exists():
            fresh = parse_key(read_key_file(pending), str(pending))
            if unseal(fresh, check, aad) == CHECK:
                return fresh
        if self._check is not None:  # it opened the gallery before: another process rotated the key since
            raise EncryptionKeyError(
                f"The gallery key was rotated by another process, and the key this gallery was opened with "
                f"({self.source}) no longer opens it: nothing was written; open the gallery again with the new key."
            )
        raise self._key.wrong(self.gallery_id)

    def _open_deks(self, path: Path) -> None:
        self._conn = self._remote() if self._remote is not None else open_deks_file(path)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn, self._kek, self._check, self.gallery_id = None, None, None, None

    def _db(self) -> KeyDb:
        if self._conn is None or self._kek is None:
            raise EncryptionKeyError("The gallery's keys are not open.")
        return self._conn

    def _rotated(self) -> bool:
        """After a data key failed to unwrap: whether another process rotated the gallery key
        since this ring loaded it (then the current key is loaded, to try again)."""
        row = self._db().execute("SELECT value FROM meta WHERE key = 'check'").fetchone()
        if row is None or bytes(row[0]) == self._check:
            return False
        with self._write():
            pass
        return True

    def _check_current(self, conn: KeyDb) -> None:
        """Refuse to wrap a key with a gallery key that another process has rotated away since the open."""
        row = conn.execute("SELECT value FROM meta WHERE key = 'check'").fetchone()
        assert self._kek is not None
        if row is None or unseal(self._kek, bytes(row[0]), (self.gallery_id or "").encode()) != CHECK:
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

    @property
    def source(self) -> str:
        """Where the gallery key comes from: argument, CONSENTMATCH_KEY, or a key file."""
        return self._key.source(self.gallery_id).describe()

    @property
    def key_file(self) -> Path | None:
        """The file holding the gallery key, when it is a file (named, or the default one)."""
        return self._key.source(self.gallery_id).path

    @property
    def created_key_file(self) -> Path | None:
        """The key file this ring created (a gallery's first write), for the caller to say once
        that it must be backed up apart from the gallery; None when it found one."""
        return self._key.created_key_file
