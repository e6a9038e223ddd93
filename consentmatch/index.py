"""FAISS: a derived, rebuildable cache of the store's templates for fast 1:N search.

Index ids are the store's template row ids (`IndexIDMap2`), so a hit maps straight back to a
row, and erasure removes the very entries (`remove_ids`), never hides them. Searches can be
restricted to a set of ids (`IDSelectorBatch`) inside FAISS, which keeps purpose filtering
exact: a post-filter could let other subjects crowd a true match out of the top k.
"""

from __future__ import annotations

import threading

import numpy as np
from numpy.typing import NDArray

from .encoder import DIMENSIONS
from .errors import EngineError

__all__ = ["FaceIndex"]


class FaceIndex:
    """Exact L2 search over templates, keyed by template id. Safe for concurrent searches."""

    def __init__(self, generation: int = -1) -> None:
        import faiss  # ~0.2 s: paid by the first search, not by `import consentmatch` or `--help`

        self._faiss = faiss
        self._index = faiss.IndexIDMap2(faiss.IndexFlatL2(DIMENSIONS))
        self._lock = threading.RLock()  # FAISS searches may run together; mutations must not
        self.generation = generation  # the store generation this index reflects

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
        if len(ids):
            with self._lock:
                self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: NDArray[np.int64]) -> int:
        """Remove these ids; returns how many entries were removed."""
        if not len(ids):
            return 0
        with self._lock:
            return int(self._index.remove_ids(self._faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))))

    def contains(self, template_id: int) -> bool:
        with self._lock:
            try:
                self._index.reconstruct(int(template_id))
            except RuntimeError:
                return False
            return True

    def search(
        self, queries: NDArray[np.float32], k: int, allowed: NDArray[np.int64] | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """The k nearest templates of each query, among `allowed` ids when given.

        Returns real Euclidean distances (FAISS's METRIC_L2 gives squares) and ids; missing
        neighbours are id -1 with distance inf.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, DIMENSIONS)
        k = max(1, min(k, len(self)))
        params = None
        if allowed is not None:
            selector = self._faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
            params = self._faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]  # SWIG kwargs
        try:
            with self._lock:
                squared, ids = self._index.search(queries, k, params=params)
        except RuntimeError as exc:
            raise EngineError(f"FAISS search failed ({exc}).") from None
        distances = np.sqrt(np.maximum(squared, 0.0), dtype=np.float32)
        distances[ids < 0] = np.inf
        return distances, ids
