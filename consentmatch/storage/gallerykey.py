"""Where a gallery's key (the KEK) comes from and how it is loaded: the `key` argument,
CONSENTMATCH_KEY, the file CONSENTMATCH_KEY_FILE, or `<key dir>/<gallery id>.key`, created with
the gallery (mode 0600); `<key file>.next` is where a rotation writes its successor first.
Which source applies is `settings.key_source`; the file is read by keyfiles.py."""

from __future__ import annotations

import secrets
from pathlib import Path

from ..crypto import KEY_BYTES, parse_key, write_private
from ..errors import EncryptionKeyError
from ..settings import KeySource, Settings, key_source
from .keyfiles import read_key_file

__all__ = ["GalleryKey"]


class GalleryKey:
    """The gallery key's source for one key ring: found, read, or created with a new gallery."""

    def __init__(self, given: bytes | None, settings: Settings) -> None:
        self._given = given
        self._settings = settings
        #: The key file this source created (a gallery's first write), for the caller to say once
        #: that it must be backed up apart from the gallery; None when it found one.
        self.created_key_file: Path | None = None

    def source(self, gallery_id: str | None) -> KeySource:
        return key_source(self._settings, self._given, gallery_id)

    def pending(self, gallery_id: str | None) -> Path | None:
        """`<key file>.next`: where a rotation writes the new key before it re-wraps."""
        key_file = self.source(gallery_id).path
        return key_file.with_name(key_file.name + ".next") if key_file else None

    def load(self, gallery_id: str, *, create: bool) -> bytes:
        """The key as its source holds it; with `create`, a new key file when the default one is missing.

        Raises:
            EncryptionKeyError: no key where the source says, or not a key.
        """
        source = self.source(gallery_id)
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

    def wrong(self, gallery_id: str | None) -> EncryptionKeyError:
        """The error for a key that does not open the gallery, saying how to give the right one."""
        fix = {
            "argument": "pass the key it was created with as Gallery(key=...)",
            "CONSENTMATCH_KEY": "set CONSENTMATCH_KEY to the key it was created with",
        }.get(self.source(gallery_id).kind, "set CONSENTMATCH_KEY_FILE (or CONSENTMATCH_KEY) to the key it was created with")
        return EncryptionKeyError(f"The gallery key ({self.source(gallery_id).describe()}) does not open this gallery: {fix}.")
