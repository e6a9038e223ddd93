"""Template encryption: a gallery key outside the gallery, and one data key per subject.

Layout (all outside the gallery file):
    gallery key (KEK)  CONSENTMATCH_KEY (64 hex digits), else the file CONSENTMATCH_KEY_FILE,
                       else <key dir>/<gallery id>.key, created with the gallery (mode 0600)
    data keys (DEKs)   <key dir>/<gallery id>.deks, an SQLite file of per-subject keys, each
                       wrapped (AES-256-GCM) by the gallery key
    key dir            CONSENTMATCH_KEY_DIR, else $XDG_DATA_HOME/consentmatch/keys
                       (~/.local/share/consentmatch/keys)

Each template is sealed with its subject's data key (AES-256-GCM, a random 96-bit nonce, the
subject's key id as associated data). Erasing a subject deletes its data key: a copy of the
gallery file restored from before the erasure can no longer be decrypted for that subject
(crypto-shredding). The index snapshot (`snapshot.py`) has data keys of its own, ids starting
with `index-`, which every erasure deletes with the subject's.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

from .errors import EncryptionKeyError
from .files import KEY_FILE_MAX_BYTES, FileKind, read_file

__all__ = ["KEY_BYTES", "KeyRing", "generate_key", "parse_key", "write_private"]

KEY_BYTES = 32
NONCE_BYTES = 12
SEALED_TEMPLATE_BYTES = NONCE_BYTES + 512 + 16  # nonce + 128 float32 + GCM tag
INDEX_KEY_PREFIX = "index-"  # data keys of index snapshots, not of subjects
_CHECK = b"consentmatch gallery key check"


def generate_key() -> str:
    """A new random gallery key, as the 64 hex digits CONSENTMATCH_KEY takes."""
    return secrets.token_hex(KEY_BYTES)


def parse_key(text: str | bytes, source: str) -> bytes:
    """32 raw bytes, or 64 hex digits (as text or bytes).

    Raises:
        EncryptionKeyError: neither.
    """
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) == KEY_BYTES:
        return raw
    try:
        key = bytes.fromhex(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise EncryptionKeyError(f"The gallery key from {source} is not 64 hex digits: make one with `consentmatch key generate`.")
    return key


_KEY_FILE = FileKind("The gallery key file", "the key file", KEY_FILE_MAX_BYTES, "a key file holds 64 hex digits")


def read_key_file(path: Path) -> bytes:
    """A key file's bytes: a regular file, small, readable by its owner only (as ssh insists).

    Raises:
        EncryptionKeyError: not a regular file, too large, unreadable, or open to others.
    """
    data = read_file(path, _KEY_FILE, EncryptionKeyError)
    check_private(path)
    return data


def check_private(path: Path) -> None:
    """Refuse, as ssh does, a key file that others may read or write, or a key folder others may write
    (they could swap the keys in it). A folder others may only list is allowed: its files are 0600.

    Raises:
        EncryptionKeyError: naming the file and the chmod that fixes it.
    """
    if os.name == "nt":  # no POSIX modes: the folder's ACLs decide
        return
    try:
        info = path.stat()
    except (OSError, ValueError):
        return  # missing: created private; unreadable: the read that follows says why
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISDIR(info.st_mode):
        if mode & 0o022:
            raise EncryptionKeyError(
                f"The key folder '{path}' is writable by others (mode {mode:04o}), who could swap the keys in it: "
                f"run `chmod 700 '{path}'`."
            )
    elif mode & 0o077:
        raise EncryptionKeyError(
            f"The gallery key file '{path}' is open to others (mode {mode:04o}): run `chmod 600 '{path}'`."
        )


def default_key_dir() -> Path:
    configured = os.environ.get("CONSENTMATCH_KEY_DIR")
    if configured:
        return Path(configured)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "consentmatch" / "keys"


def aead(key: bytes) -> Any:
    """An AES-256-GCM cipher (cryptography's AESGCM), imported lazily so `import consentmatch` stays light."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + bytes(aead(key).encrypt(nonce, plaintext, aad))


def unseal(key: bytes, sealed: bytes, aad: bytes) -> bytes | None:
    """The plaintext, or None when the key or associated data do not fit (tampered or wrong key)."""
    return unseal_with(aead(key), sealed, aad)


def unseal_with(cipher: Any, sealed: bytes, aad: bytes) -> bytes | None:
    from cryptography.exceptions import InvalidTag

    try:
        return bytes(cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad))
    except InvalidTag:
        return None


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Write a secret file atomically (temp + fsync + rename), readable by its owner only.

    `exclusive`: never replace an existing file (two processes creating one gallery at once
    must agree on one key); returns False when the file was already there.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, 0o600)
        os.write(handle, data)
        os.fsync(handle)
        os.close(handle)
        if exclusive:
            try:
                os.link(temp, path)  # atomic, and fails if another process got there first
            except FileExistsError:
                return False
            finally:
                os.unlink(temp)
        else:
            os.replace(temp, path)
        return True
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


class KeyRing:
    """The gallery key and the per-subject data keys of one gallery.

    Args:
        key: the gallery key itself (32 bytes or 64 hex digits); None: from the environment
            or the key file.
        key_dir: where key files live; None: CONSENTMATCH_KEY_DIR or the user data folder.
    """

    def __init__(self, key: bytes | str | None = None, key_dir: str | os.PathLike[str] | None = None) -> None:
        self._given = parse_key(key, "the `key` argument") if key is not None else None
        self.key_dir = Path(key_dir) if key_dir is not None else default_key_dir()
        self._lock = threading.RLock()
        self._kek: bytes | None = None
        self._deks: dict[str, bytes] = {}
        self._conn: sqlite3.Connection | None = None
        self.gallery_id: str | None = None

    # -- opening ---------------------------------------------------------------------------

    def open(self, gallery_id: str, *, created: bool, create: bool) -> bool:
        """Load the gallery key and the data-key store; returns True when it creates them.

        `created`: the gallery says its keys exist. The key check lives in the data-key store,
        in the same transaction as every re-wrap, so a rotation cut short is finished here
        from the `.next` key file it writes first.

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
                self._db().execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('check', ?)",
                                   (seal(self._kek, _CHECK, gallery_id.encode()),))
                return True
            if not deks.exists():
                raise EncryptionKeyError(
                    f"The data keys of this gallery are missing ({deks}): set CONSENTMATCH_KEY_DIR to the folder "
                    "that holds them, or restore it from your key backup."
                )
            self._open_deks(deks)
            assert self._conn is not None
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'check'").fetchone()
            kek = self._load_kek(gallery_id, create=False)
            if row is None or unseal(kek, bytes(row[0]), gallery_id.encode()) != _CHECK:
                kek = self._finish_rotation(kek, bytes(row[0]) if row else b"")
            self._kek = kek
            return False

    def _finish_rotation(self, kek: bytes, check: bytes) -> bytes:
        """The key file does not open the store: a rotation stopped after re-wrapping may have left
        the new key in `<key file>.next`; adopt it. Otherwise the key is wrong."""
        pending = self.key_file.with_name(self.key_file.name + ".next") if self.key_file else None
        if pending is not None and pending.exists():
            fresh = parse_key(read_key_file(pending), str(pending))
            if unseal(fresh, check, (self.gallery_id or "").encode()) == _CHECK:
                assert self.key_file is not None
                os.replace(pending, self.key_file)
                return fresh
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        raise EncryptionKeyError(
            "The gallery key does not open this gallery: set CONSENTMATCH_KEY or CONSENTMATCH_KEY_FILE "
            "to the key it was created with."
        )

    def _load_kek(self, gallery_id: str, *, create: bool) -> bytes:
        if self._given is not None:
            return self._given
        if os.environ.get("CONSENTMATCH_KEY"):
            return parse_key(os.environ["CONSENTMATCH_KEY"], "CONSENTMATCH_KEY")
        named = os.environ.get("CONSENTMATCH_KEY_FILE")
        path = Path(named) if named else self.key_dir / f"{gallery_id}.key"
        if path.exists():
            return parse_key(read_key_file(path), str(path))
        if create and not named:
            key = secrets.token_bytes(KEY_BYTES)
            if write_private(path, key.hex().encode(), exclusive=True):
                return key
            return parse_key(read_key_file(path), str(path))  # another process created it first
        raise EncryptionKeyError(
            f"The gallery key was not found ({path}): set CONSENTMATCH_KEY or CONSENTMATCH_KEY_FILE, "
            "or CONSENTMATCH_KEY_DIR to the folder that holds it."
        )

    def _open_deks(self, path: Path) -> None:
        check_private(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            os.chmod(path, 0o600)
            conn.execute("PRAGMA secure_delete = ON")  # a shredded key is overwritten, not just unlinked
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("CREATE TABLE IF NOT EXISTS deks (key_id TEXT PRIMARY KEY, wrapped BLOB NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        except sqlite3.Error as exc:
            raise EncryptionKeyError(f"The data-key store '{path}' cannot be opened ({exc}).") from None
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn, self._kek, self.gallery_id = None, None, None
            self._deks.clear()

    # -- data keys -------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._kek is None:
            raise EncryptionKeyError("The gallery's keys are not open.")
        return self._conn

    def new_subject_key(self) -> str:
        """Create and store a data key for a new subject; returns its id (committed at once)."""
        return self._new_key(secrets.token_hex(16))

    def new_index_key(self) -> tuple[str, bytes]:
        """Create and store a data key for an index snapshot; returns its id and the key."""
        key_id = self._new_key(INDEX_KEY_PREFIX + secrets.token_hex(16))
        return key_id, self._deks[key_id]

    def _new_key(self, key_id: str) -> str:
        with self._lock:
            dek = secrets.token_bytes(KEY_BYTES)
            assert self._kek is not None
            self._db().execute("INSERT INTO deks (key_id, wrapped) VALUES (?, ?)", (key_id, seal(self._kek, dek, key_id.encode())))
            self._deks[key_id] = dek
            return key_id

    def data_key(self, key_id: str) -> bytes | None:
        """The subject's data key, or None once shredded."""
        with self._lock:
            if key_id not in self._deks:
                row = self._db().execute("SELECT wrapped FROM deks WHERE key_id = ?", (key_id,)).fetchone()
                if row is None:
                    return None
                assert self._kek is not None
                dek = unseal(self._kek, bytes(row[0]), key_id.encode())
                if dek is None:
                    raise EncryptionKeyError(f"The data key {key_id[:8]}... does not open with this gallery key.")
                self._deks[key_id] = dek
            return self._deks[key_id]

    def load_all(self) -> None:
        """Unwrap every data key at once: one query and one gallery-key cipher, not one per subject."""
        with self._lock:
            assert self._kek is not None
            cipher = aead(self._kek)
            for key_id, wrapped in self._db().execute("SELECT key_id, wrapped FROM deks"):
                if key_id not in self._deks:
                    dek = unseal_with(cipher, bytes(wrapped), str(key_id).encode())
                    if dek is None:
                        raise EncryptionKeyError(f"The data key {str(key_id)[:8]}... does not open with this gallery key.")
                    self._deks[str(key_id)] = dek

    def key_ids(self) -> set[str]:
        """The subjects' data key ids."""
        with self._lock:
            return {str(r[0]) for r in self._db().execute("SELECT key_id FROM deks") if not str(r[0]).startswith(INDEX_KEY_PREFIX)}

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
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("DELETE FROM deks WHERE key_id = ?", [(k,) for k in key_ids])
                if any(not k.startswith(INDEX_KEY_PREFIX) for k in key_ids):
                    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('shred_stamp', ?)", (secrets.token_hex(16),))
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
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('shred_stamp', ?)", (secrets.token_hex(16),))
                row = conn.execute("SELECT value FROM meta WHERE key = 'shred_stamp'").fetchone()
            return str(row[0])

    def seal_template(self, key_id: str, plaintext: bytes) -> bytes:
        dek = self.data_key(key_id)
        if dek is None:
            raise EncryptionKeyError("This subject's data key was shredded: the subject was erased.")
        return seal(dek, plaintext, key_id.encode())

    def rotate(self, new_key: bytes | None = None) -> bytes:
        """Re-wrap every data key under a new gallery key; returns the new key.

        Crash-safe: a key file's successor is written first (`<key file>.next`), then the
        re-wrapped keys and the new check commit together, then the successor replaces the
        key file; `open` finishes a rotation cut short. A key held by the caller (argument or
        CONSENTMATCH_KEY) must be given as `new_key`, stored by the caller beforehand.

        Raises:
            EncryptionKeyError: a caller-held key without `new_key`; a data key that does not open.
        """
        with self._lock:
            conn, old = self._db(), self._kek
            assert old is not None and self.gallery_id is not None
            if self.key_file is None and new_key is None:
                raise EncryptionKeyError(
                    "The gallery key is held by the caller: store a new one first (generate_key()), then pass it as new_key."
                )
            fresh = new_key or secrets.token_bytes(KEY_BYTES)
            pending = self.key_file.with_name(self.key_file.name + ".next") if self.key_file else None
            if pending is not None:
                write_private(pending, fresh.hex().encode())
            rows = conn.execute("SELECT key_id, wrapped FROM deks").fetchall()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for key_id, wrapped in rows:
                    dek = unseal(old, bytes(wrapped), str(key_id).encode())
                    if dek is None:
                        raise EncryptionKeyError(f"Data key {str(key_id)[:8]}... does not open: rotation stopped, nothing changed.")
                    conn.execute("UPDATE deks SET wrapped = ? WHERE key_id = ?", (seal(fresh, dek, str(key_id).encode()), key_id))
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('check', ?)",
                             (seal(fresh, _CHECK, self.gallery_id.encode()),))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if pending is not None and pending.exists():
                    pending.unlink()
                raise
            if pending is not None and self.key_file is not None:
                os.replace(pending, self.key_file)
            self._kek = fresh
            return fresh

    @property
    def source(self) -> str:
        """Where the gallery key comes from: argument, CONSENTMATCH_KEY, or a key file."""
        if self._given is not None:
            return "argument"
        if os.environ.get("CONSENTMATCH_KEY"):
            return "CONSENTMATCH_KEY"
        return f"key file {self.key_file}"

    @property
    def key_file(self) -> Path | None:
        """The file holding the gallery key, when it is a file (named, or the default one)."""
        if self._given is not None or os.environ.get("CONSENTMATCH_KEY"):
            return None
        named = os.environ.get("CONSENTMATCH_KEY_FILE")
        if named:
            return Path(named)
        return self.key_dir / f"{self.gallery_id}.key" if self.gallery_id else None
