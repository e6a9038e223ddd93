"""Settings: the one place that reads the environment, declared once as a table.

`Settings.from_env()` is called by the CLI entry (and by `Gallery` when it is given none);
everything below takes a `Settings` value, so nothing else reads `os.environ` and a test can
pass its own without patching the process environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from .errors import InvalidArgumentError

_N = TypeVar("_N", int, float)

__all__ = ["SETTINGS", "Setting", "Settings", "KeySource", "key_source"]


@dataclass(frozen=True)
class Setting:
    """One environment variable: the field it fills and what it is for (the README's table)."""

    field: str
    env: str
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("gallery", "CONSENTMATCH_GALLERY", "The gallery: an SQLite file path, or a postgresql:// URL (the CLI's --gallery)."),
    Setting("key", "CONSENTMATCH_KEY", "The gallery key itself, 64 hex digits (wins over the key file)."),
    Setting("key_file", "CONSENTMATCH_KEY_FILE", "A file holding the gallery key (wins over the key folder)."),
    Setting("key_dir", "CONSENTMATCH_KEY_DIR",
            "Where key files and data-key stores live (default $XDG_DATA_HOME/consentmatch/keys)."),
    Setting("cache_dir", "CONSENTMATCH_CACHE_DIR",
            "Where converted models are cached (default $XDG_CACHE_HOME/consentmatch)."),
    Setting("encoder", "CONSENTMATCH_ENCODER", "Force an encoder backend: onnx or dlib (default: the fastest that works)."),
    Setting("detector", "CONSENTMATCH_DETECTOR",
            "The face detector: yunet (libfacedetection's CNN, 6-8x cheaper; the default on Linux x86-64) "
            "or hog (dlib's, face_recognition's own; the default elsewhere)."),
    Setting("quality", "CONSENTMATCH_QUALITY", "Default quality bar of new galleries: off, low, medium or high."),
    Setting("actor", "CONSENTMATCH_ACTOR", "Who is calling, for the audit trail (the CLI's --actor)."),
    Setting("debug", "CONSENTMATCH_DEBUG", "Set to 1 to show tracebacks of unexpected errors (CLI only)."),
    Setting("header_timeout", "CONSENTMATCH_HEADER_TIMEOUT",
            "`serve`: seconds a connection has to send a request's line and headers, else it is closed (default 10)."),
    Setting("keep_alive", "CONSENTMATCH_KEEP_ALIVE",
            "`serve`: seconds an idle connection is kept open between requests (default 5)."),
    Setting("max_connections", "CONSENTMATCH_MAX_CONNECTIONS",
            "`serve`: open connections at most; beyond it the longest-waiting one without a request goes (default 1000)."),
    Setting("photo_workers", "CONSENTMATCH_PHOTO_WORKERS",
            "`serve`: requests doing photo work at once; more are answered 503 with Retry-After "
            "(default: the CPU count, from 2 to 4)."),
)


@dataclass(frozen=True)
class Settings:
    """Everything the environment may set, read once. Empty strings count as unset."""

    gallery: Path | str | None = None  # a file path, or a postgresql:// URL kept as given (Path would fold its '//')
    key: str | None = None
    key_file: Path | None = None
    key_dir: Path | None = None
    cache_dir: Path | None = None
    encoder: str = ""
    detector: str = ""
    quality: str | None = None
    actor: str | None = None
    debug: bool = False
    header_timeout: float = 10.0
    keep_alive: float = 5.0
    max_connections: int = 1000
    photo_workers: int = 0  # 0: the CPU count, from 2 to 4 (`photo_slots`)

    @property
    def photo_slots(self) -> int:
        """How many requests may do photo work at once: each 40-megapixel photo holds ~0.4 GB while decoded."""
        return self.photo_workers or max(2, min(4, os.cpu_count() or 1))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings of this process (or of `environ`), with the XDG defaults filled in."""
        env = os.environ if environ is None else environ
        raw = {s.field: env.get(s.env, "").strip() or None for s in SETTINGS}
        home = Path.home
        data = Path(env.get("XDG_DATA_HOME") or str(home() / ".local" / "share"))
        cache = Path(env.get("XDG_CACHE_HOME") or str(home() / ".cache"))
        return cls(
            gallery=_location(raw["gallery"]),
            key=raw["key"],
            key_file=_path(raw["key_file"]),
            key_dir=_path(raw["key_dir"]) or data / "consentmatch" / "keys",
            cache_dir=_path(raw["cache_dir"]) or cache / "consentmatch",
            encoder=(raw["encoder"] or "").lower(),
            detector=(raw["detector"] or "").lower(),
            quality=(raw["quality"] or "").lower() or None,
            actor=raw["actor"],
            debug=raw["debug"] not in (None, "0", "false", "no"),
            header_timeout=_number(raw, "header_timeout", float, 10.0, 0.1),
            keep_alive=_number(raw, "keep_alive", float, 5.0, 0.1),
            max_connections=_number(raw, "max_connections", int, 1000, 10),
            photo_workers=_number(raw, "photo_workers", int, 0, 0),
        )

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (None leaves a field as it is)."""
        names = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in changes.items() if k in names and v is not None})


@dataclass(frozen=True)
class KeySource:
    """Where a gallery's key comes from: given, from CONSENTMATCH_KEY, or a file (named or default)."""

    kind: str  # "argument", "CONSENTMATCH_KEY", "named file", "key file"
    key: bytes | str | None = None
    path: Path | None = None

    def describe(self) -> str:
        """As `consentmatch key info` shows it: argument, CONSENTMATCH_KEY, or key file PATH."""
        return self.kind if self.path is None and self.kind != "key file" else f"key file {self.path}"


def key_source(settings: Settings, given: bytes | str | None, gallery_id: str | None) -> KeySource:
    """The key precedence, in one place: the `key` argument, CONSENTMATCH_KEY, CONSENTMATCH_KEY_FILE,
    then `<key dir>/<gallery id>.key` (None while the gallery id is unknown)."""
    if given is not None:
        return KeySource("argument", key=given)
    if settings.key:
        return KeySource("CONSENTMATCH_KEY", key=settings.key)
    if settings.key_file is not None:
        return KeySource("named file", path=settings.key_file)
    key_dir = settings.key_dir or Settings.from_env().key_dir
    assert key_dir is not None
    return KeySource("key file", path=key_dir / f"{gallery_id}.key" if gallery_id else None)



def _number(raw: Mapping[str, str | None], field: str, kind: type[_N], default: _N, least: _N) -> _N:
    """A numeric setting, or a one-line error naming the variable and what it takes."""
    value = raw[field]
    if value is None:
        return default
    env = next(s.env for s in SETTINGS if s.field == field)
    try:
        number = kind(value)
    except ValueError:
        number = None
    if number is None or not number >= least or number != number:
        raise InvalidArgumentError(f"{env}={value!r} is not a number of at least {least}: fix or unset it.")
    return number


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _location(value: str | None) -> Path | str | None:
    """A gallery location: a database URL as given, a file as a Path."""
    return value if value and value.startswith(("postgresql://", "postgres://")) else _path(value)
