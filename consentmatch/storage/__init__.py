"""Gallery stores: one interface (`base.py`), one module per engine. All SQL lives in this package.

`open_store` picks the engine from the gallery's location: a file path is SQLite, the
embedded default.
"""

from __future__ import annotations

from pathlib import Path

from ..settings import Settings
from .base import Commit, Searchable, Store, Transaction, reference_taken, unknown_reference
from .keyring import KeyRing

__all__ = ["Commit", "KeyRing", "Searchable", "Store", "Transaction", "open_store", "reference_taken", "unknown_reference"]


def open_store(location: Path, keys: KeyRing, settings: Settings) -> Store:
    """The store of a gallery (nothing is read or created until its first transaction)."""
    from .sqlite import SqliteStore

    return SqliteStore(location, keys, quality=settings.quality)
