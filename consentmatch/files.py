"""Reading a file a caller names: a regular file under a size limit, or one line saying why not.

Every file consentmatch reads on a caller's say-so goes through `read_file`: photos, import
manifests, pairs files, signed releases (evidence) and key files. A device such as /dev/zero
never ends and a FIFO blocks, so the path is looked up before it is opened (a device is never
opened), opened without waiting for a writer, and checked again on the open file (a path
swapped in between cannot slip a device in); no more than the limit is ever read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CSV_MAX_BYTES", "EVIDENCE_MAX_BYTES", "KEY_FILE_MAX_BYTES", "FileKind", "read_file"]

_MIB = 1024 * 1024
#: Manifests and pairs files: about half a million rows.
CSV_MAX_BYTES = 64 * _MIB
#: A signed release (a scan or a PDF); only its SHA-256 is kept.
EVIDENCE_MAX_BYTES = 64 * _MIB
#: A gallery key file holds 64 hex digits.
KEY_FILE_MAX_BYTES = 4 * 1024


@dataclass(frozen=True)
class FileKind:
    """How one kind of file is named in errors, what to name instead, and how large it may be."""

    label: str  # starts each error, e.g. "Manifest" -> "Manifest 'x.csv' ..."; "" for photos
    noun: str  # what the caller should name instead, e.g. "the CSV file"
    limit: int  # the most bytes read
    shrink: str  # what to do with a file over the limit


def read_file(path: str | os.PathLike[str], kind: FileKind, error: Callable[[str], Exception]) -> bytes:
    """The whole file, if it is a regular file of at most `kind.limit` bytes.

    Raises:
        whatever `error` makes of a one-line message: missing, a directory, a device, FIFO
        or socket, too large, unreadable, or a name with a NUL in it.
    """
    name = os.fspath(path)
    subject = f"{kind.label} '{name}'" if kind.label else f"'{name}'"
    problem, data = _read(name, subject, kind)
    if problem is not None:
        raise error(problem)
    return data


def _read(name: str, subject: str, kind: FileKind) -> tuple[str | None, bytes]:
    """The data, or what is wrong (as text: the caller's error type may itself be an OSError or ValueError)."""
    try:
        problem = _problem(os.stat(name), subject, kind)
        if problem is not None:
            return problem, b""
        # O_NONBLOCK: opening a FIFO swapped in since the stat must not wait for a writer.
        handle = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(handle, "rb", closefd=True) as file:
            problem = _problem(os.fstat(file.fileno()), subject, kind)
            if problem is not None:
                return problem, b""
            data = file.read(kind.limit + 1)  # never more than the limit, even if the file grows
    except ValueError:  # a NUL in the path
        return f"{kind.label + ' ' if kind.label else ''}{name!r} is not a valid file name: check the path.", b""
    except FileNotFoundError:
        return f"{subject} does not exist: check the path.", b""
    except PermissionError:
        return f"{subject} cannot be read (permission denied): check its permissions.", b""
    except OSError as exc:
        return f"{subject} cannot be read ({exc.strerror or exc}).", b""
    if len(data) > kind.limit:
        return f"{subject} grew past the {_amount(kind.limit, exact=False)} limit while being read: {kind.shrink}.", b""
    return None, data


def _problem(info: os.stat_result, subject: str, kind: FileKind) -> str | None:
    if stat.S_ISDIR(info.st_mode):
        return f"{subject} is a directory, not a regular file: name {kind.noun}."
    if not stat.S_ISREG(info.st_mode):  # /dev/zero never ends, a FIFO or socket blocks
        return f"{subject} is not a regular file (a device, pipe or socket): name {kind.noun}."
    if info.st_size > kind.limit:
        return f"{subject} is {_amount(info.st_size)}, over the {_amount(kind.limit, exact=False)} limit: {kind.shrink}."
    return None


def _amount(size: int, *, exact: bool = True) -> str:
    """A size as people read it; `exact` adds the byte count where the unit rounds it."""
    if size % _MIB == 0 and not exact:
        return f"{size // _MIB} MiB"
    if size % 1024 == 0 and not exact:
        return f"{size // 1024} KiB"
    if size < _MIB:
        return f"{size:,} bytes"
    return f"{size / _MIB:.1f} MiB ({size:,} bytes)"
