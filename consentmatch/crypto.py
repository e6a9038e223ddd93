"""The cryptographic primitives: AES-256-GCM sealing, gallery keys, private files.

Engine-free and SQL-free: the key store (storage/keyring.py), the index snapshot and the
stores all seal through these. `cryptography` is imported on first use, so importing
consentmatch stays light.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from .errors import EncryptionKeyError

__all__ = [
    "KEY_BYTES", "NONCE_BYTES", "SEALED_TEMPLATE_BYTES", "aead", "generate_key", "parse_key", "seal", "unseal",
    "unseal_with", "write_private",
]

KEY_BYTES = 32
NONCE_BYTES = 12
SEALED_TEMPLATE_BYTES = NONCE_BYTES + 512 + 16  # nonce + 128 float32 + GCM tag


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
