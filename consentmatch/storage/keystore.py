"""The data-key store: where a gallery's data keys live, each wrapped by the gallery key (keyring.py).

Two tables, `deks` (key id, wrapped key) and `meta` (the key check, stamps and marks), in an
SQLite file beside the key file (`<key dir>/<gallery id>.deks`, `open_deks_file`) or, for a
PostgreSQL gallery, in its keys database (postgres.py). The ring speaks to either through
`KeyDb`, in SQL both engines run. A data key's id says what it seals, by its prefix.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any, Protocol

from ..errors import EncryptionKeyError
from .keyfiles import check_private

__all__ = [
    "API_KEY_PREFIX", "INDEX_KEY_PREFIX", "INSERT_META", "MAC_KEY_ID", "MAC_KEY_PREFIX", "NOT_SUBJECTS",
    "REQUEST_KEY_PREFIX", "UPSERT_META", "KeyDb", "meta_text", "open_deks_file",
]

INDEX_KEY_PREFIX = "index-"  # data keys of index snapshots, not of subjects
MAC_KEY_PREFIX = "mac-"  # the gallery's MAC key: neither a subject's nor an index's, never shredded
MAC_KEY_ID = MAC_KEY_PREFIX + "1"
REQUEST_KEY_PREFIX = "request-"  # data keys of probes held for approval, shredded when decided
API_KEY_PREFIX = "apikey-"  # one per live API key: revoking it shreds it, so an old row rolled back opens nothing
#: Every data key id that is not a subject's begins with one of these (a subject's is 32 hex digits).
NOT_SUBJECTS = (INDEX_KEY_PREFIX, MAC_KEY_PREFIX, REQUEST_KEY_PREFIX, API_KEY_PREFIX)

# Statements both SQLite and PostgreSQL run (the key store may be either, `KeyDb`).
UPSERT_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
INSERT_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"


def meta_text(value: Any) -> str:
    """A text value of the key store's meta table: bytes (BLOB, BYTEA) since both engines could hold
    it; text in SQLite stores written before."""
    return bytes(value).decode() if isinstance(value, (bytes, bytearray, memoryview)) else str(value)


class KeyDb(Protocol):
    """The data-key store's connection, as the key ring uses it: sqlite3's calls (`BEGIN IMMEDIATE`
    takes the store's write lock), qmark parameters, SQL that SQLite and PostgreSQL both speak.
    An SQLite file by default; a PostgreSQL gallery's keys database through `postgres_conn.PgConnection`."""

    @property
    def in_transaction(self) -> bool: ...
    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...
    def executemany(self, sql: str, parameters: Any, /) -> Any: ...
    def close(self) -> None: ...


def open_deks_file(path: Path) -> KeyDb:
    """The `.deks` file of a gallery (created 0600 in a private folder when missing), with its tables.

    Raises:
        EncryptionKeyError: the folder is open to others, or SQLite cannot open the file.
    """
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
    return conn
