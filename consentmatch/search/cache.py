"""The gallery's in-memory search state, kept in step with its store by the store itself.

One `IndexCache` per open gallery owns the live `FaceIndex`, the templates each purpose may
search (`Searchable`), and the encrypted snapshot beside the gallery file (`snapshot.py`). It
listens to the store (`Store.on_commit`): a commit that starts from the index's generation is
applied to it (templates removed and added) and moves it on; any other (another process wrote
in between) drops it, to be loaded again on next use: from the snapshot when that holds exactly
the store's templates, else from the store. No service touches a generation.
"""

from __future__ import annotations

import threading
from datetime import datetime

import numpy as np
from numpy.typing import NDArray

from ..errors import ConsentMatchError
from ..storage.base import Commit, Searchable, Store, Transaction
from . import snapshot
from .index import FaceIndex

__all__ = ["IndexCache"]


class IndexCache:
    """The live index and per-purpose searchable sets of one store, following its commits.

    Args:
        store: the gallery's store; the cache registers itself as a commit listener.
        lock: the gallery's lock (reentrant), held around every change of the cache.
    """

    def __init__(self, store: Store, lock: threading.RLock) -> None:
        self._store = store
        self._lock = lock
        self._index: FaceIndex | None = None
        self._searchable: dict[str | None, tuple[int, Searchable]] = {}
        self._snapshot = snapshot.path_for(store.path)
        self._saved_state: str | None = None  # the templates_state of the snapshot on disk, when known
        self._removed = 0  # index entries the last commit applied removed
        store.on_commit(self._follow)

    @property
    def live(self) -> FaceIndex | None:
        """The index in memory now, if any (None: loaded at next use)."""
        return self._index

    def _follow(self, commit: Commit) -> None:
        """Apply a committed write to the live index, or drop the index if it was already stale."""
        with self._lock:
            self._searchable.clear()
            self._removed = 0
            index = self._index
            if index is None or index.generation != commit.before:
                self._index = None
                return
            self._removed = index.remove(commit.removed_ids)
            if len(commit.added_ids):
                index.add(commit.added_ids, commit.added_vectors)
            index.generation = commit.after

    def index(self, tx: Transaction) -> FaceIndex:
        """The index of the store as `tx` sees it: the live one, else the snapshot when it holds
        exactly the store's templates, else rebuilt from the store."""
        generation = tx.generation()
        with self._lock:
            if self._index is None or self._index.generation != generation:
                index = self._load_snapshot(tx, generation)
                if index is None:
                    index = FaceIndex(generation)
                    index.add(*tx.all_templates())
                self._index = index
            return self._index

    def search_state(self, tx: Transaction, purpose: str | None, now: datetime) -> tuple[FaceIndex, Searchable]:
        """The current index and the templates searchable for `purpose` at `now`, loaded when stale."""
        with self._lock:
            return self.index(tx), self._searchable_for(tx, purpose, now)

    def _searchable_for(self, tx: Transaction, purpose: str | None, now: datetime) -> Searchable:
        generation = tx.generation()
        cached = self._searchable.get(purpose)
        if cached is not None:
            cached_generation, searchable = cached
            if cached_generation == generation and (searchable.valid_until is None or now < searchable.valid_until):
                return searchable
        searchable = tx.searchable(purpose, now)
        searchable.template_ids.setflags(write=False)  # FaceIndex reuses its id bitmap while this array lives
        self._searchable[purpose] = (generation, searchable)
        return searchable

    # -- erasure ---------------------------------------------------------------------------

    def before_erasure(self) -> None:
        """Load the snapshot as the live index when there is none, so the erasure removes its
        templates from it too and `close` saves it current."""
        with self._lock:
            if self._index is None:
                with self._store.read() as tx:
                    self._index = self._load_snapshot(tx, tx.generation())

    def after_erasure(self) -> int:
        """Forget the snapshot on disk (its key is shredded); returns how many index entries the
        erasure's commit removed (0 when the live index was stale and dropped)."""
        with self._lock:
            self._saved_state = None
            snapshot.discard(self._snapshot)
            return self._removed

    def finds_none(self, ids: NDArray[np.int64], vectors: NDArray[np.float32]) -> bool:
        """Searching the live index with these templates finds none of them, nor does it hold their
        ids. (Without a live index there is nothing to search: any index built later comes from the
        store.)"""
        with self._lock:
            index = self._index
            if index is None or not len(index):
                return True
            _, found = index.search(vectors, min(len(index), 10))
            return not np.isin(found, ids).any() and not any(index.contains(int(i)) for i in ids)

    # -- snapshot --------------------------------------------------------------------------

    def _load_snapshot(self, tx: Transaction, generation: int) -> FaceIndex | None:
        """The saved index, when it holds exactly the store's templates."""
        state = tx.templates_state()
        index = snapshot.load(self._snapshot, self._store.keys, state, generation)
        if index is not None:
            self._saved_state = state
        return index

    def close(self) -> None:
        """Save a large live index for the next open, then drop the index and the searchable sets.

        Saved under the write lock, so no erasure runs between the check and the save. A snapshot
        is a cache: one that cannot be written is skipped (the next open rebuilds).
        """
        with self._lock:
            index = self._index
            if index is not None and len(index) >= snapshot.SNAPSHOT_FROM and self._store.exists():
                try:
                    with self._store.write(bump=False) as tx:
                        state = tx.templates_state()
                        if tx.generation() == index.generation and state != self._saved_state:
                            snapshot.save(self._snapshot, index, self._store.keys, state)
                            self._saved_state = state
                except (OSError, ConsentMatchError):
                    pass
            self._index = None
            self._searchable.clear()
