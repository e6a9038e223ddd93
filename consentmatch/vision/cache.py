"""The model cache: files derived from the installed models at first use, kept between processes.

The folder is the caller's (`Settings.cache_dir`: $CONSENTMATCH_CACHE_DIR, else
$XDG_CACHE_HOME/consentmatch, else ~/.cache/consentmatch); this module only reads and writes in it.

Each file sits beside a `.sha256` file (`sha256sum -c` reads it), so a damaged copy is rebuilt
rather than trusted; files are replaced atomically, so a concurrent reader sees the old file or
the new one; a folder that cannot be written is skipped (the caller rebuilds in memory, once per
process). Deleting the folder is always safe.

Hashing the 22 MB models at every start cost each process ~0.06 s, so a full check is also
recorded in a `.verified` stamp: the checksum it confirmed and the file's device, inode, size,
mtime and ctime. While the file's stat still equals its stamp the hash is skipped; any write,
truncation, replacement or `touch` changes ctime (which no user can set back), and a new
checksum changes the digest, so those copies are hashed again and rebuilt if wrong. A stamp is
only recorded for a file unchanged for `SETTLED_NS` (git's "racily clean" rule), so a change in
the same tick of the filesystem's clock cannot leave the stamp valid. The stamp trusts what
the checksum file trusts, the folder's owner: it guards against damage, as the checksum does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["SETTLED_NS", "converted", "file_digest", "read_checked", "write_checked"]

#: How long a file must have been unchanged before a stamp may vouch for it (filesystem clocks
#: tick every few milliseconds; two seconds also covers FAT's and network filesystems' coarser ones).
SETTLED_NS = 2_000_000_000
STAMP_MAX_BYTES = 512


def _checksum_file(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _stamp_file(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _stamp(digest: str, stat: os.stat_result) -> str:
    return f"{digest} {stat.st_dev} {stat.st_ino} {stat.st_size} {stat.st_mtime_ns} {stat.st_ctime_ns}\n"


def _read_stamp(stamp_file: Path) -> str:
    """The stamp's line ("" when missing or unreadable); a stamp is one short line, so no more is read."""
    try:
        with stamp_file.open("rb") as handle:
            return handle.read(STAMP_MAX_BYTES).decode("ascii")
    except (OSError, UnicodeDecodeError):
        return ""


def _stamped(stamp_file: Path, digest: str, stat: os.stat_result) -> bool:
    """Whether `stamp_file` says a file with this stat was last seen hashing to `digest`."""
    return _read_stamp(stamp_file) == _stamp(digest, stat)


def _record(stamp_file: Path, digest: str, stat: os.stat_result) -> None:
    """Record a full check of a file that has settled; nothing when it is too fresh or the folder is read-only."""
    if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) >= SETTLED_NS:
        _replace(stamp_file, _stamp(digest, stat).encode("ascii"))


def read_checked(target: Path) -> bytes | None:
    """The cached file's bytes if it is there and matches its checksum, else None.

    The SHA-256 is skipped when the file's stamp vouches for it (unchanged since a full check).
    """
    try:
        expected = _checksum_file(target).read_text(encoding="ascii").split()[0]
        with target.open("rb") as handle:
            stat = os.fstat(handle.fileno())  # of the very file read below
            data = handle.read()
    except (OSError, UnicodeDecodeError, IndexError):
        return None
    if _stamped(_stamp_file(target), expected, stat):
        return data
    if hashlib.sha256(data).hexdigest() != expected:
        return None
    _record(_stamp_file(target), expected, stat)
    return data


def file_digest(source: Path, folder: Path | None) -> str:
    """The SHA-256 of `source` (a file outside the cache, e.g. an installed model), remembered in
    `folder` under a stamp as cached files are, so an unchanged file is not hashed at every start.

    Raises:
        OSError: `source` cannot be read.
    """
    with source.open("rb") as handle:
        stat = os.fstat(handle.fileno())
        stamp_file = None
        if folder is not None:
            where = hashlib.blake2b(str(source.resolve()).encode(), digest_size=8).hexdigest()  # which install
            stamp_file = folder / f"source-{where}-{source.name}.verified"
            recorded = (_read_stamp(stamp_file).split() or [""])[0]
            if recorded and _stamped(stamp_file, recorded, stat):
                return recorded
        digest = hashlib.sha256(handle.read()).hexdigest()
    if stamp_file is not None:
        _record(stamp_file, digest, stat)
    return digest


def _replace(path: Path, content: bytes) -> bool:
    """Write `path` atomically; False (and nothing half-written) if its folder cannot be written."""
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


def write_checked(target: Path, data: bytes) -> bool:
    """Cache `data` at `target` with its checksum; False (and nothing half-written) if the folder cannot be written."""
    checksum = f"{hashlib.sha256(data).hexdigest()}  {target.name}\n".encode("ascii")
    # The new file's stamp comes from a later full check: it is too fresh to be vouched for now.
    return _replace(target, data) and _replace(_checksum_file(target), checksum)


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
