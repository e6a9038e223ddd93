"""Gallery stores: one interface (`base.py`), one module per engine. All SQL lives in this package.

`open_store` picks the engine from the gallery's location (`ENGINES`): a file path is SQLite,
the embedded default; a `postgresql://` URL is PostgreSQL (`postgres.py`), one gallery for many machines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..settings import Settings
from .base import Commit, Searchable, Store, Transaction, reference_taken, unknown_reference
from .keyring import KeyRing

__all__ = ["ENGINES", "Commit", "Engine", "KeyRing", "Searchable", "Store", "Transaction", "is_url", "open_store", "reference_taken", "unknown_reference"]


@dataclass(frozen=True)
class Engine:
    """A store engine: the location prefixes that pick it and how it opens (imported on first use,
    so `import consentmatch` loads no database driver)."""

    name: str
    prefixes: tuple[str, ...]  # empty: the default, for any location no other engine claims
    open: Callable[[str, KeyRing, Settings], Store]


def _sqlite(location: str, keys: KeyRing, settings: Settings) -> Store:
    from .sqlite import SqliteStore

    return SqliteStore(Path(location), keys, quality=settings.quality)


def _postgres(location: str, keys: KeyRing, settings: Settings) -> Store:
    from .postgres import PgStore

    cache_dir = settings.cache_dir or Settings.from_env().cache_dir
    assert cache_dir is not None
    return PgStore(location, keys, quality=settings.quality, cache_dir=cache_dir)


#: Every engine, first match wins: a new one is a row here (and its module behind `base.Store`).
ENGINES: tuple[Engine, ...] = (
    Engine("postgresql", ("postgresql://", "postgres://"), _postgres),
    Engine("sqlite", (), _sqlite),
)


def _engine(location: str | Path) -> Engine:
    text = str(location)
    return next(e for e in ENGINES if not e.prefixes or text.startswith(e.prefixes))


def is_url(location: str | Path) -> bool:
    """Whether a gallery location names a database server rather than an SQLite file."""
    return bool(_engine(location).prefixes)


def open_store(location: str | Path, keys: KeyRing, settings: Settings) -> Store:
    """The store of a gallery (nothing is read or created until its first transaction)."""
    return _engine(location).open(str(location), keys, settings)
