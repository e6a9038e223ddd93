"""The marks of live API keys: one data key per key, `apikey-<key id>`, that nothing is sealed
under. Revoking an API key shreds its mark, so the key's row rolled back (a restored copy of the
gallery file) to before its revocation no longer counts as live (storage/sqlite_access.py)."""

from __future__ import annotations

import secrets

from ..crypto import KEY_BYTES, seal
from .keycheck import KeyCore
from .keystore import (
    API_KEY_PREFIX, INSERT_META,
)

__all__ = ["ApiKeyMarks"]


class ApiKeyMarks:
    """The API key marks in a `KeyRing`'s key store, read fresh on every call (another process may revoke)."""

    def __init__(self, ring: KeyCore) -> None:
        self._ring = ring

    def new_api_key_mark(self, key_id: str) -> None:
        """Store the mark of a new live API key (a data key nothing is sealed under): `revoke`
        shreds it, so the key's row rolled back to before its revocation no longer counts as live."""
        self.mark_api_keys([key_id])

    def mark_api_keys(self, key_ids: list[str]) -> None:
        """Store the marks of live API keys that have none yet (a gallery from before the marks)."""
        with self._ring._lock:
            self._ring._db()
            with self._ring._write() as conn:
                assert self._ring._kek is not None
                kek = self._ring._kek
                rows = [(API_KEY_PREFIX + k, seal(kek, secrets.token_bytes(KEY_BYTES), (API_KEY_PREFIX + k).encode()))
                        for k in key_ids]
                conn.executemany("INSERT INTO deks (key_id, wrapped) VALUES (?, ?) ON CONFLICT (key_id) DO NOTHING", rows)

    def api_key_live(self, key_id: str) -> bool:
        """Whether an API key's mark exists (read from the key store each time, never cached: another
        process may have revoked the key)."""
        with self._ring._lock:
            row = self._ring._db().execute("SELECT 1 FROM deks WHERE key_id = ?", (API_KEY_PREFIX + key_id,)).fetchone()
            return row is not None

    def api_keys_marked(self) -> bool:
        """Whether the live API keys of this gallery were given their marks (`mark_api_keys`, once per key store)."""
        with self._ring._lock:
            return self._ring._db().execute("SELECT 1 FROM meta WHERE key = 'api_keys_marked'").fetchone() is not None

    def set_api_keys_marked(self) -> None:
        with self._ring._lock:
            self._ring._db().execute(INSERT_META, ("api_keys_marked", b"1"))
