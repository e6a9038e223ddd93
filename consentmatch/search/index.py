"""FAISS: a derived, rebuildable cache of the store's templates for fast 1:N search.

Index ids are the store's template row ids, so a hit maps straight back to a row, and erasure
removes the very entries (`remove_ids`), never hides them. Searches can be restricted to a set
of ids (an id selector) inside FAISS, which keeps purpose filtering exact: a post-filter could
let other subjects crowd a true match out of the top k.

The kind of index follows the gallery's size (figures in benchmarks/README.md):

- below `EXACT_BELOW` templates, or with `exact=True`: exhaustive search
  (`IndexIDMap2(IndexFlatL2)`), exact, a few ms a query at that size;
- from `EXACT_BELOW` on: an inverted file, `IVF<nlist>(PCA32,Flat),SQfp16`. k-means splits
  the templates into `nlist` lists (found in a 32-d PCA projection, which makes placing 1M
  templates 4x cheaper) and a search scans the `nprobe` lists nearest the probe, ~2.5% of a
  1M gallery, finding exact search's nearest template for >= 99% of probes. Templates are
  kept as float16 (256 bytes): distances are within 2e-4 of the exact ones. A hashtable
  direct map finds each id's list, so `remove_ids` deletes entries in place.

The parameters follow the size the index was trained for (`IndexParams`); the index retrains
itself when the gallery grows or shrinks fourfold past it.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import EngineError
from ..vision.types import DIMENSIONS

__all__ = ["EXACT_BELOW", "FaceIndex", "IndexParams"]

#: Galleries smaller than this are searched exhaustively (exact, ~2 ms a query on 2 cores).
EXACT_BELOW = 10_000

_COARSE_DIMENSIONS = 32  # the space the IVF lists are found in (see FaceIndex._ivf)
_TRAIN_POINTS_PER_LIST = 40  # FAISS asks for at least 39 per centroid (and prints a warning below)
_KMEANS_ITERATIONS = 10  # instead of 25: the lists only need to be good, and this is paid at open
_REFIT_FACTOR = 4  # retrain once the size has grown or shrunk this many times past the trained size
_READ_BLOCK = 1 << 22  # bytes per read when FAISS reads a serialized index
#: Searches of fewer queries than this (a probe's faces) run on the calling thread alone: an
#: OpenMP team gains nothing on a few rows, and its idle thread spins on a core after each
#: search, ~1 s of CPU taken from the photo threads on 60 probes (benchmarks/README.md).
_SERIAL_QUERIES = 16


@dataclass(frozen=True)
class IndexParams:
    """What an index was built with, so a gallery can record it (all plain values)."""

    kind: str  # "flat" (exact) or "ivf"
    nlist: int  # inverted lists (0 for flat)
    nprobe: int  # lists scanned per query (0 for flat)
    trained_size: int  # the template count the parameters were chosen for

    @property
    def description(self) -> str:
        """The FAISS factory string of the index, e.g. ``IVF1024(PCA32,Flat),SQfp16``."""
        return f"IVF{self.nlist}(PCA{_COARSE_DIMENSIONS},Flat),SQfp16" if self.kind == "ivf" else "IDMap2,Flat"


def ivf_params(size: int) -> IndexParams:
    """The IVF parameters for `size` templates, as tuned by benchmarks/search.py.

    nlist ~ sqrt(size) as a power of two keeps both the coarse step (nlist centroids) and the
    scan (nprobe lists of size/nlist) small; nprobe = nlist/40 scans ~2.5% of the templates,
    which gave recall@1 >= 0.99 at 1M (benchmarks/README.md).
    """
    nlist = 2 ** round(math.log2(math.sqrt(max(size, 1))))
    nlist = min(max(nlist, 64), 65_536)
    return IndexParams(kind="ivf", nlist=nlist, nprobe=max(16, nlist // 40), trained_size=size)


class FaceIndex:
    """Nearest-template search over templates keyed by template id. Safe to share between threads.

    Args:
        generation: the store generation this index reflects.
        exact: always search exhaustively, whatever the size.
    """

    def __init__(self, generation: int = -1, *, exact: bool = False) -> None:
        import faiss  # ~0.2 s: paid by the first search, not by `import consentmatch` or `--help`

        self._faiss: Any = faiss  # SWIG bindings: its stubs miss much of the API
        self._lock = threading.RLock()  # mutations and searches take turns
        self._selectors: dict[int, tuple[weakref.ref[NDArray[np.int64]], Any, NDArray[np.uint8]]] = {}
        self.generation = generation
        self.exact = exact
        self._index: Any = faiss.IndexIDMap2(faiss.IndexFlatL2(DIMENSIONS))
        self.params = IndexParams(kind="flat", nlist=0, nprobe=0, trained_size=0)

    @classmethod
    def build(
        cls, ids: NDArray[np.int64], vectors: NDArray[np.float32], generation: int = -1, *, exact: bool = False
    ) -> FaceIndex:
        """An index over these templates, of the kind their number calls for, trained once."""
        index = cls(generation, exact=exact)
        index.add(ids, vectors)
        return index

    def to_bytes(self) -> NDArray[np.uint8]:
        """FAISS's own serialization of the index: ids, lists, float16 codes and the id map."""
        with self._lock, _engine("serialize"):
            return np.asarray(self._faiss.serialize_index(self._index), dtype=np.uint8)

    @classmethod
    def from_bytes(cls, data: NDArray[np.uint8], params: IndexParams, generation: int = -1) -> FaceIndex:
        """The index `to_bytes` gave, with the parameters it was built with.

        Raises:
            EngineError: FAISS cannot read the bytes, or they hold another kind of index.
        """
        index = cls(generation)
        view, position = memoryview(np.ascontiguousarray(data, dtype=np.uint8).data), 0

        def read(size: int) -> bytes:
            # FAISS pulls the bytes in blocks: no second whole copy (`deserialize_index` makes
            # one), so less memory at the peak, and 2x faster at 1M.
            nonlocal position
            block = view[position:position + size].tobytes()
            position += len(block)
            return block

        with _engine("read"):
            loaded = index._faiss.read_index(index._faiss.PyCallbackIOReader(read, _READ_BLOCK))
        expected = "IndexIVFScalarQuantizer" if params.kind == "ivf" else "IndexIDMap2"
        if type(loaded).__name__ != expected or loaded.d != DIMENSIONS:
            raise EngineError(f"FAISS read a {type(loaded).__name__}, not the {params.description} it was saved as.")
        index._index, index.params = loaded, params
        return index

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def nprobe(self) -> int:
        """Lists scanned per query (IVF only): more is slower and finds the exact nearest more often."""
        return self.params.nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.params.kind == "ivf":
            self.params = replace(self.params, nprobe=min(max(1, int(value)), self.params.nlist))

    def add(self, ids: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
        """Add templates; may switch to IVF or retrain when the size calls for other parameters."""
        if not len(ids):
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, DIMENSIONS)
        with self._lock, _engine("add"):
            size = len(self) + len(ids)
            if self._fits(size):
                self._index.add_with_ids(vectors, ids)
            else:
                old_ids, old_vectors = self._contents()
                self._rebuild(np.concatenate([old_ids, ids]), np.concatenate([old_vectors, vectors]))

    def remove(self, ids: NDArray[np.int64]) -> int:
        """Delete these ids' entries (ids not present are skipped); returns how many were removed."""
        if not len(ids):
            return 0
        with self._lock, _engine("remove"):
            selector = self._faiss.IDSelectorArray(np.ascontiguousarray(ids, dtype=np.int64))  # what a hashtable map takes
            removed = int(self._index.remove_ids(selector))
            if not self._fits(len(self)):
                self._rebuild(*self._contents())
            return removed

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

        The filter runs inside FAISS, so no other id is ever returned or crowds one out. With
        IVF a filtered search scans the same lists as an unfiltered one: a probe's true match
        is found as often, though a narrow `allowed` may leave fewer than k far candidates.
        The id set built from a read-only `allowed` array is reused while that array lives:
        pass a new array rather than changing one in place.

        Returns:
            Real Euclidean distances (FAISS's METRIC_L2 gives squares) and ids, nearest first;
            missing neighbours are id -1 with distance inf.

        Raises:
            EngineError: FAISS failed.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, DIMENSIONS)
        with self._lock, _engine("search"), _threads(self._faiss, 1 if len(queries) < _SERIAL_QUERIES else None):
            k = max(1, min(k, len(self)))
            selector, _bitmap = (None, None) if allowed is None else self._selector(allowed)
            if self.params.kind == "ivf":
                params: Any = self._faiss.SearchParametersIVF(sel=selector, nprobe=self.params.nprobe)
            else:
                params = None if selector is None else self._faiss.SearchParameters(sel=selector)
            squared, ids = self._index.search(queries, k, params=params)
        distances = np.sqrt(np.maximum(squared, 0.0), dtype=np.float32)
        distances[ids < 0] = np.inf
        return distances, ids

    # -- internals -------------------------------------------------------------------------

    def _fits(self, size: int) -> bool:
        """Whether the current kind and parameters still suit `size` templates."""
        if self.params.kind == "flat":
            return self.exact or size < EXACT_BELOW
        if size < EXACT_BELOW // 2:  # hysteresis: a gallery hovering at the threshold stays put
            return False
        trained = self.params.trained_size
        return trained / _REFIT_FACTOR < size < trained * _REFIT_FACTOR

    def _rebuild(self, ids: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
        """Replace the index by one of the kind and parameters that `len(ids)` calls for."""
        faiss = self._faiss
        if self.exact or len(ids) < EXACT_BELOW:
            index = faiss.IndexIDMap2(faiss.IndexFlatL2(DIMENSIONS))
            params = IndexParams(kind="flat", nlist=0, nprobe=0, trained_size=len(ids))
            index.add_with_ids(vectors, ids)
        else:
            params = ivf_params(len(ids))
            index = self._ivf(params, vectors)
            self._fill(index, ids, vectors)
        self._index, self.params = index, params

    def _ivf(self, params: IndexParams, vectors: NDArray[np.float32]) -> Any:
        """An empty IVF index with its lists trained on a sample of `vectors`.

        The lists are k-means centroids in a PCA projection to `_COARSE_DIMENSIONS`: placing
        1M templates in 1024 lists then costs a quarter of the full-dimension work (the bulk
        of the time to open a large gallery), for the same recall (benchmarks/README.md).
        """
        faiss = self._faiss
        count = min(len(vectors), params.nlist * _TRAIN_POINTS_PER_LIST)
        sample = vectors[np.sort(np.random.default_rng(0).choice(len(vectors), count, replace=False))]
        pca = faiss.PCAMatrix(DIMENSIONS, _COARSE_DIMENSIONS)
        coarse = faiss.IndexPreTransform(pca, faiss.IndexFlatL2(_COARSE_DIMENSIONS))
        coarse.train(sample)  # the projection
        kmeans = faiss.Kmeans(_COARSE_DIMENSIONS, params.nlist, niter=_KMEANS_ITERATIONS, seed=1234)
        kmeans.train(pca.apply(sample))
        coarse.add(pca.reverse_transform(kmeans.centroids))  # projected back on add: the same centroids
        index = faiss.IndexIVFScalarQuantizer(
            coarse, DIMENSIONS, params.nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2, False
        )
        index.train(sample)  # the lists are set already: this only readies the float16 codes
        return index

    def _fill(self, index: Any, ids: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
        """Put every template in its list at once, then map ids to lists.

        Appending one by one (`add_with_ids`) grows each list by doubling, which left ~495
        bytes a template at 1M instead of ~420.
        """
        swig_ptr = self._faiss.swig_ptr
        numbers = index.quantizer.assign(vectors, 1).reshape(-1)
        order = np.argsort(numbers, kind="stable")
        ids, codes = np.ascontiguousarray(ids[order]), index.sq.compute_codes(vectors[order])
        counts = np.bincount(numbers, minlength=index.nlist)
        ends = np.cumsum(counts)
        for number in np.flatnonzero(counts):
            start, end = int(ends[number] - counts[number]), int(ends[number])
            index.invlists.add_entries(int(number), end - start, swig_ptr(ids[start:end]), swig_ptr(codes[start:end]))
        index.ntotal = len(ids)
        index.set_direct_map_type(self._faiss.DirectMap.Hashtable)  # id -> (list, offset): exact, in-place removal

    def _contents(self) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Every (id, vector) held, to rebuild from (IVF vectors come back as their float16 values)."""
        faiss = self._faiss
        if self.params.kind == "flat":
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            flat = faiss.downcast_index(self._index.index)
            vectors = faiss.vector_to_array(flat.codes).view(np.float32).reshape(-1, DIMENSIONS)
            return ids, vectors
        lists = self._index.invlists
        id_parts, code_parts = [], []
        for number in range(lists.nlist):
            size = lists.list_size(number)
            if size:
                id_parts.append(faiss.rev_swig_ptr(lists.get_ids(number), size).copy())
                code_parts.append(faiss.rev_swig_ptr(lists.get_codes(number), size * lists.code_size).copy())
        if not id_parts:
            return np.empty(0, np.int64), np.empty((0, DIMENSIONS), np.float32)
        codes = np.concatenate(code_parts).reshape(-1, lists.code_size)
        return np.concatenate(id_parts).astype(np.int64), self._index.sq.decode(codes)

    def _selector(self, allowed: NDArray[np.int64]) -> tuple[Any, NDArray[np.uint8]]:
        """A bitmap of the allowed ids (one bit per id up to the largest, tested in O(1)) and its selector.

        Built once per read-only array (~3 ms at 1M ids); a hash set (`IDSelectorBatch`)
        would cost 60 ms to build and 3x more per test. The caller keeps the bitmap alive
        while the selector is used: FAISS holds only a raw pointer into it.
        """
        key = id(allowed)
        cached = self._selectors.get(key)
        if cached is not None and cached[0]() is allowed:
            return cached[1], cached[2]
        wanted = np.asarray(allowed, dtype=np.int64)
        wanted = wanted[wanted >= 0]
        bits = np.zeros(int(wanted.max(initial=-1)) + 1, dtype=bool)
        bits[wanted] = True
        bitmap = np.packbits(bits, bitorder="little")  # bit i % 8 of byte i // 8 is id i
        selector = self._faiss.IDSelectorBitmap(len(bitmap), self._faiss.swig_ptr(bitmap))
        if isinstance(allowed, np.ndarray) and not allowed.flags.writeable:
            self._selectors = {k: v for k, v in self._selectors.items() if v[0]() is not None}
            self._selectors[key] = (weakref.ref(allowed), selector, bitmap)
        return selector, bitmap


@contextmanager
def _threads(faiss: Any, count: int | None) -> Iterator[None]:
    """FAISS's OpenMP threads for the calls inside, on this thread only (OpenMP keeps the
    setting per thread); None leaves it."""
    before = faiss.omp_get_max_threads()
    if count is not None:
        faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        if count is not None:
            faiss.omp_set_num_threads(before)


@contextmanager
def _engine(action: str) -> Iterator[None]:
    """FAISS's RuntimeError as EngineError."""
    try:
        yield
    except RuntimeError as exc:
        raise EngineError(f"FAISS {action} failed ({exc}).") from None
