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

This module is the ring the stores use: `KeyRing`, its jobs each in a module of its own:
    keycheck.py     the core: the gallery key opened and checked against the key store, its
                    write transaction (every wrap and key file move), kept current across processes
    gallerykey.py   where the gallery key comes from; read, or created with the gallery
    datakeys.py     data keys made, unwrapped, shredded; the MAC key
    keyrotation.py  rotation of the gallery key; wrapped keys taken to another store (adopt)
    apikeymarks.py  the live API keys' marks
    keyfiles.py     reading a key file; keystore.py: the key store's tables, file and key id kinds
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..settings import Settings
from .apikeymarks import ApiKeyMarks
from .datakeys import DataKeys
from .keycheck import KeyCore
from .keyrotation import Rotation
from .keystore import API_KEY_PREFIX, INDEX_KEY_PREFIX, MAC_KEY_ID, KeyDb

# The key ids' kinds and the store's connection (keystore.py) are imported from here too.
__all__ = ["API_KEY_PREFIX", "INDEX_KEY_PREFIX", "MAC_KEY_ID", "KeyDb", "KeyRing"]


class KeyRing(KeyCore):
    """The gallery key and the per-subject data keys of one gallery: the one object the stores use.
    Its core (opening, the key check, the write transaction) is `KeyCore`; each other job is a
    collaborator, which these methods name (their docstrings say the rest). Arguments as `KeyCore`.
    """

    def __init__(
        self, key: bytes | str | None = None, key_dir: str | os.PathLike[str] | None = None,
        settings: Settings | None = None,
    ) -> None:
        super().__init__(key, key_dir, settings)
        self._data = DataKeys(self)
        self._marks = ApiKeyMarks(self)
        self._rotation = Rotation(self)

    def close(self) -> None:
        with self._lock:
            super().close()
            self._data.clear()

    # -- data keys (datakeys.py)

    def new_subject_key(self) -> str:
        return self._data.new_subject_key()

    @contextmanager
    def deferred(self) -> Iterator[None]:
        with self._data.deferred():
            yield

    def new_index_key(self) -> tuple[str, bytes]:
        return self._data.new_index_key()

    def new_request_key(self) -> str:
        return self._data.new_request_key()

    def data_key(self, key_id: str) -> bytes | None:
        return self._data.data_key(key_id)

    def load_all(self) -> None:
        self._data.load_all()

    def key_ids(self) -> set[str]:
        return self._data.key_ids()

    def index_key_ids(self) -> set[str]:
        return self._data.index_key_ids()

    def shred(self, key_ids: list[str]) -> None:
        self._data.shred(key_ids)

    def shred_stamp(self) -> str:
        return self._data.shred_stamp()

    def seal_template(self, key_id: str, plaintext: bytes, aad: bytes) -> bytes:
        return self._data.seal_template(key_id, plaintext, aad)

    def mac_key(self) -> bytes:
        return self._data.mac_key()

    # -- API key marks (apikeymarks.py)

    def new_api_key_mark(self, key_id: str) -> None:
        self._marks.new_api_key_mark(key_id)

    def mark_api_keys(self, key_ids: list[str]) -> None:
        self._marks.mark_api_keys(key_ids)

    def api_key_live(self, key_id: str) -> bool:
        return self._marks.api_key_live(key_id)

    def api_keys_marked(self) -> bool:
        return self._marks.api_keys_marked()

    def set_api_keys_marked(self) -> None:
        self._marks.set_api_keys_marked()

    # -- rotation and copies (keyrotation.py)

    def rotate(self, new_key: bytes | None = None, *, record: str | None = None) -> bytes:
        return self._rotation.rotate(new_key, record=record)

    def unrecorded_rotation(self) -> str | None:
        return self._rotation.unrecorded_rotation()

    def rotation_recorded(self, record: str) -> None:
        self._rotation.rotation_recorded(record)

    def wrapped_keys(self) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        return self._rotation.wrapped_keys()

    def adopt(self, gallery_id: str, deks: list[tuple[str, bytes]], meta: list[tuple[str, bytes]],
              key_file: Path | None = None) -> None:
        self._rotation.adopt(gallery_id, deks, meta, key_file)
