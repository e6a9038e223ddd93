"""The index saved beside the gallery, encrypted, so a large gallery opens without decrypting every template.

Building the index of a 1M-template gallery means unsealing 1M templates and placing them in
their lists (~15 s on 2 cores); reading this file back takes about a second. It is a cache,
like the index itself: any doubt (missing, damaged, another gallery's, saved from other
templates, its key gone) and the gallery rebuilds the index from the store instead.

File `<gallery>.index`, written atomically (temp + fsync + rename), mode 0600:

    MAGIC | header length (4 bytes, big-endian) | header (JSON) | ciphertext | GCM tag (16)

The header names the gallery, the `templates_state` stamp of the templates it was saved from
(migration 4: new with every template row added, changed or deleted), the index parameters and
the id of its data key; it is the associated data, so none of it can be altered unnoticed. The
body is FAISS's serialization of the index (float16 templates and their ids), sealed with
AES-256-GCM under a data key of its own, kept with the subjects' keys and wrapped by the
gallery key (storage/keyring.py). Each save makes a new key and shreds the older ones; every erasure
shreds them all in its own transaction, so no snapshot that holds an erased template stays
readable, even a copy of the file or its blocks left on disk (SECURITY.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..crypto import NONCE_BYTES
from ..errors import EngineError
from ..storage.keyring import INDEX_KEY_PREFIX, KeyRing
from .index import EXACT_BELOW, FaceIndex, IndexParams


__all__ = ["SNAPSHOT_FROM", "discard", "load", "path_for", "save"]

#: Smaller indexes are rebuilt at each open (a flat index of fewer templates builds in well
#: under a second); from this size on the IVF index is worth saving.
SNAPSHOT_FROM = EXACT_BELOW
MAGIC = b"CMINDEX1"
FORMAT = 1
_TAG_BYTES = 16
_CHUNK = 16 << 20  # encrypt and decrypt in 16 MiB steps: no second full copy of the index in memory


def path_for(gallery: Path) -> Path:
    """The snapshot file of a gallery file: `visitors.db` -> `visitors.db.index`."""
    return gallery.with_name(gallery.name + ".index")


def save(path: Path, index: FaceIndex, keys: KeyRing, templates_state: str) -> None:
    """Write `index` as the snapshot of the templates stamped `templates_state`, under a new data key.

    The caller holds the gallery's write lock, so no erasure can shred keys in between: the
    older snapshots' keys are shredded here once the new file is in place.

    Raises:
        OSError: the file cannot be written (nothing is left behind; the old snapshot stays).
    """
    data = index.to_bytes()
    gallery_id = keys.gallery_id or ""
    key_id, key = keys.new_index_key()
    nonce = secrets.token_bytes(NONCE_BYTES)
    header = json.dumps({
        "format": FORMAT,
        "gallery_id": gallery_id,
        "templates_state": templates_state,
        "key_id": key_id,
        "nonce": nonce.hex(),
        "params": {"kind": index.params.kind, "nlist": index.params.nlist, "nprobe": index.params.nprobe,
                   "trained_size": index.params.trained_size},
        "bytes": len(data),
    }, sort_keys=True).encode()
    prefix = MAGIC + len(header).to_bytes(4, "big") + header
    for left in path.parent.glob(f".{path.name}.*"):  # a save killed midway (no save runs beside this one)
        discard(left)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            os.fchmod(out.fileno(), 0o600)
            encryptor = _cipher(key, nonce).encryptor()
            encryptor.authenticate_additional_data(prefix)
            out.write(prefix)
            view = memoryview(data.data)
            for start in range(0, len(data), _CHUNK):
                out.write(encryptor.update(view[start:start + _CHUNK]))
            out.write(encryptor.finalize())
            out.write(encryptor.tag)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
        _sync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        keys.shred([key_id])
        raise
    keys.shred(sorted(keys.index_key_ids() - {key_id}))


def load(path: Path, keys: KeyRing, templates_state: str, generation: int) -> FaceIndex | None:
    """The saved index when it is this gallery's (that of `keys`), of exactly these templates, and intact; else None."""
    try:
        with path.open("rb") as source:
            prefix, header = _header(source)
            if (header.get("format") != FORMAT or header.get("gallery_id") != keys.gallery_id
                    or header.get("templates_state") != templates_state):
                return None
            key_id = str(header["key_id"])
            key = keys.data_key(key_id) if key_id.startswith(INDEX_KEY_PREFIX) else None
            if key is None:  # shredded by an erasure
                return None
            size = int(header["bytes"])
            if size != os.fstat(source.fileno()).st_size - len(prefix) - _TAG_BYTES:  # before allocating it
                return None
            data = _decrypted(source, key, bytes.fromhex(header["nonce"]), prefix, size)
            if data is None:
                return None
        params = IndexParams(**{name: header["params"][name] for name in ("kind", "nlist", "nprobe", "trained_size")})
        return FaceIndex.from_bytes(data, params, generation)
    except (OSError, ValueError, KeyError, TypeError, EngineError):
        return None


def discard(path: Path) -> None:
    """Remove the snapshot file, if any (its key is shredded already: this only frees the space)."""
    with contextlib.suppress(OSError):
        path.unlink()


def _header(source: io.BufferedReader) -> tuple[bytes, dict[str, Any]]:
    start = source.read(len(MAGIC) + 4)
    if len(start) != len(MAGIC) + 4 or not start.startswith(MAGIC):
        raise ValueError("not an index snapshot")
    raw = source.read(int.from_bytes(start[len(MAGIC):], "big"))
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError("not an index snapshot")
    return start + raw, header


def _decrypted(source: io.BufferedReader, key: bytes, nonce: bytes, prefix: bytes, size: int) -> NDArray[np.uint8] | None:
    """The body, decrypted into one buffer in steps; None unless the tag proves it whole and unaltered."""
    from cryptography.exceptions import InvalidTag

    decryptor = _cipher(key, nonce).decryptor()
    decryptor.authenticate_additional_data(prefix)
    data = np.empty(size + 15, dtype=np.uint8)  # update_into wants a block's room beyond its input
    out, chunk = memoryview(data.data), memoryview(bytearray(min(_CHUNK, max(size, 1))))
    done = 0
    while done < size:
        count = source.readinto(chunk[:min(len(chunk), size - done)])
        if not count:
            return None
        done += decryptor.update_into(chunk[:count], out[done:done + count + 15])
    tag = source.read(_TAG_BYTES + 1)
    if len(tag) != _TAG_BYTES:
        return None
    try:
        decryptor.finalize_with_tag(tag)
    except InvalidTag:
        return None
    return data[:size]


def _cipher(key: bytes, nonce: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    return Cipher(algorithms.AES(key), modes.GCM(nonce))


def _sync_folder(folder: Path) -> None:
    """fsync the folder, so the rename itself survives a power cut."""
    with contextlib.suppress(OSError):
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
