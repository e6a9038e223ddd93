"""The gallery key's file: read only when it is a regular file, small, and its owner's alone (as
ssh insists), in a folder nobody else may write. Where the key comes from is `settings.key_source`."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import EncryptionKeyError
from ..files import KEY_FILE_MAX_BYTES, FileKind, read_file

__all__ = ["check_private", "read_key_file"]

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
