"""The model cache: files derived from the installed models at first use, kept between processes.

The folder is the caller's (`Settings.cache_dir`: $CONSENTMATCH_CACHE_DIR, else
$XDG_CACHE_HOME/consentmatch, else ~/.cache/consentmatch); this module only reads and writes in it.

Each file sits beside a `.sha256` file (`sha256sum -c` reads it), so a damaged copy is rebuilt
rather than trusted; files are replaced atomically, so a concurrent reader sees the old file or
the new one; a folder that cannot be written is skipped (the caller rebuilds in memory, once per
process). Deleting the folder is always safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["converted", "read_checked", "write_checked"]


def _checksum_file(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def read_checked(target: Path) -> bytes | None:
    """The cached file's bytes if it is there and matches its checksum, else None."""
    try:
        data = target.read_bytes()
        expected = _checksum_file(target).read_text(encoding="ascii").split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        return None
    return data if hashlib.sha256(data).hexdigest() == expected else None


def write_checked(target: Path, data: bytes) -> bool:
    """Cache `data` at `target` with its checksum; False (and nothing half-written) if the folder cannot be written."""
    checksum = f"{hashlib.sha256(data).hexdigest()}  {target.name}\n".encode("ascii")
    for path, content in ((target, data), (_checksum_file(target), checksum)):
        # Unique per process and thread, so two writers never share a partial file.
        partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(content)
            os.replace(partial, path)  # atomic: a concurrent reader sees the old file or the new one
        except OSError:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            return False
    return True


def converted(folder: Path | None, name: str, build: Callable[[], bytes]) -> bytes:
    """A model converted from foreign weights: the checked copy cached as `name` in `folder`, else
    `build()` now, cached for the next process (a folder that cannot be written: built again then)."""
    target = folder / name if folder is not None else None
    cached = read_checked(target) if target is not None else None
    if cached is not None:
        return cached
    model = build()
    if target is not None:
        write_checked(target, model)
    return model
