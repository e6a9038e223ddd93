"""Gallery stores: one interface (`base.py`), one module per engine. All SQL lives in this package.

`open_store` picks the engine from the gallery's location: a file path is SQLite, the
embedded default; a `postgresql://` URL is PostgreSQL (`postgres.py`), one gallery for many machines.
"""

from __future__ import annotations

from pathlib import Path

from ..settings import Settings
from .base import Commit, Searchable, Store, Transaction, reference_taken, unknown_reference
from .keyring import KeyRing

__all__ = ["Commit", "KeyRing", "Searchable", "Store", "Transaction", "is_url", "open_store", "reference_taken", "unknown_reference"]


def is_url(location: str | Path) -> bool:
    """Whether a gallery location names a PostgreSQL database rather than an SQLite file."""
    return str(location).startswith(("postgresql://", "postgres://"))


def open_store(location: str | Path, keys: KeyRing, settings: Settings) -> Store:
    """The store of a gallery (nothing is read or created until its first transaction)."""
    if is_url(location):
        from .postgres import PgStore

        cache_dir = settings.cache_dir or Settings.from_env().cache_dir
        assert cache_dir is not None
        return PgStore(str(location), keys, quality=settings.quality, cache_dir=cache_dir)
    from .sqlite import SqliteStore

    return SqliteStore(Path(location), keys, quality=settings.quality)
