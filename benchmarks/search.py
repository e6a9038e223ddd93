"""1:N search at scale: the project's own store and index with N templates, timed per probe.

Fills a real gallery file (consentmatch.storage.sqlite.SqliteStore, in a temporary folder) with N templates the
way the gallery enrolls them, two per subject, every subject consented for `visitor-check-in`
and every tenth also for `staff-access`. Then opens it as the gallery does: first without a
snapshot (read every template, build the index: `rebuild_s`), saves the encrypted snapshot as
`Gallery.close` does (`save_s`), and opens again from the snapshot in a fresh process (`open_s`,
`open_rss_bytes`). Times single-probe searches through the same FaceIndex, filtered by
purpose as `Gallery.match` filters them. recall@1 is how often the index's nearest template is
exact search's nearest; `face_distance` is face_recognition's linear scan over the same templates.

Templates are synthetic unless --data names an (N, 128) float32 .npy: the statistics of dlib
encodings (a shared mean of norm ~1.3, distances between people ~0.8). Probes are a second
"photo" of a stored person (the stored row plus noise of norm 0.3-0.5, where dlib puts most
same-person pairs) unless --probes names a .npy.

    uv run python benchmarks/search.py --size 1000000 --queries 200 --json
    uv run python benchmarks/search.py --size 1000000 --exact --json
    uv run python benchmarks/search.py --size 100000 --gallery postgresql:///bench --json

With `--gallery postgresql://...` (an empty database, or one this script filled before) the
store is PostgreSQL (storage/postgres.py): filled as a file and moved up with `consentmatch
copy`'s code (`copy_s`; one enrollment transaction per row would take hours at 1M), then the
same open and searches, the snapshot in this node's cache folder, and the database sizes
(gallery and keys) as the store's bytes.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consentmatch.search import snapshot
from consentmatch.consent import Consent
from consentmatch.vision.types import DIMENSIONS
from consentmatch.search.index import FaceIndex
from consentmatch.results import Box
from consentmatch.services.transfer import copy_gallery
from consentmatch.settings import Settings
from consentmatch.storage import KeyRing, Store, is_url, open_store
from _report import report  # benchmarks/ is on sys.path when a script runs

PURPOSE, SUBSET_PURPOSE = "visitor-check-in", "staff-access"
PER_SUBJECT = 2  # templates per subject, as with two enrollment photos
SUBSET_EVERY = 10  # every tenth subject also consented for SUBSET_PURPOSE
TOP_K = 5  # Gallery.match's default


def synthetic_templates(size: int, seed: int = 0) -> NDArray[np.float32]:
    """Rows shaped like dlib encodings: a common mean plus a spread with a decaying spectrum."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(DIMENSIONS)
    mean *= 1.31 / np.linalg.norm(mean)  # dlib encodings have norm ~1.4, mostly a shared mean
    basis, _ = np.linalg.qr(rng.standard_normal((DIMENSIONS, DIMENSIONS)))
    scale = np.arange(1, DIMENSIONS + 1) ** -0.5
    spread = (basis * (0.6 * scale / np.linalg.norm(scale))).T.astype(np.float32)  # people ~0.8 apart
    rows = np.empty((size, DIMENSIONS), dtype=np.float32)
    for start in range(0, size, 100_000):
        block = rng.standard_normal((min(100_000, size - start), DIMENSIONS), dtype=np.float32)
        rows[start : start + len(block)] = block @ spread + mean.astype(np.float32)
    return rows


def second_photos(rows: NDArray[np.float32], count: int, seed: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Noisy copies of `count` random rows (distance 0.3-0.5: a second photo of the same person)."""
    rng = np.random.default_rng(seed)
    sources = rng.choice(len(rows), size=min(count, len(rows)), replace=False)
    noise = rng.standard_normal((len(sources), DIMENSIONS))
    noise *= rng.uniform(0.3, 0.5, (len(sources), 1)) / np.linalg.norm(noise, axis=1, keepdims=True)
    return (rows[sources] + noise).astype(np.float32), sources


def make_store(location: str) -> Store:
    """The gallery's store, as Gallery opens it: an SQLite file, or a PostgreSQL database."""
    settings = Settings.from_env()
    return open_store(location, KeyRing(settings=settings), settings)


def store_bytes(location: str, store: Store) -> int:
    """The gallery's size on disk: the file and its keys, or the two databases."""
    if not is_url(location):
        path, keys = Path(location), Path(os.environ["CONSENTMATCH_KEY_DIR"])
        return path.stat().st_size + sum(f.stat().st_size for f in keys.rglob("*") if f.is_file())
    with store.read() as tx:
        (size,) = tx.conn.execute(  # type: ignore[attr-defined]
            "SELECT pg_database_size(current_database()) + pg_database_size(current_database() || '_keys')").fetchone()
    return int(size)


def fill_store(location: str, rows: NDArray[np.float32]) -> None:
    """Enroll every row with Store's own statements, as Gallery.enroll does, in 50k-row transactions.

    Bulk-load shortcut (benchmark only): the subjects' new data keys are committed once per
    chunk, not one fsync'd transaction per subject as enrollment does (5 ms each, 40 minutes
    for 1M templates). Everything the open and the searches read is written as enrollment writes it.
    """
    store = make_store(location)
    now = datetime.now(timezone.utc)
    box = Box(40, 200, 200, 40)
    subject_id = consent_id = 0
    try:
        for start in range(0, len(rows), 50_000):
            with store.write(create=True) as tx:
                keys = store.keys._db() if hasattr(store, "keys") else None  # the data-key file, if the store seals
                if keys is not None:
                    keys.execute("BEGIN")
                for row in range(start, min(len(rows), start + 50_000)):
                    person = row // PER_SUBJECT
                    if row % PER_SUBJECT == 0:
                        purposes = [PURPOSE, SUBSET_PURPOSE] if person % SUBSET_EVERY == 0 else [PURPOSE]
                        subject_id = tx.ensure_subject(f"person-{person:08d}", now)
                        consent = Consent(f"FORM-{person:08d}", purposes)
                        consent_id = tx.record_consent(subject_id, consent, now)
                        tx.seal_consent(consent_id)
                    tx.add_template(subject_id, consent_id, rows[row], f"{row:064x}", box, now)
                    if row % PER_SUBJECT == 0:
                        tx.seal_subject(subject_id)  # its MAC covers the data key id its first template made
                if keys is not None:
                    keys.execute("COMMIT")  # the keys before the templates they open
    finally:
        store.close()


def _index_memory(folder: Path, rows: NDArray[np.float32], ids: NDArray[np.int64], exact: bool) -> int:
    """The memory of the index alone: built again in a fresh process, whose heap holds nothing else."""
    np.save(folder / "rows.npy", rows)
    np.save(folder / "ids.npy", ids)
    code = (
        "import sys, numpy as np, faiss; from pathlib import Path; from consentmatch.search.index import FaceIndex\n"
        "rows, ids = np.load(sys.argv[1]), np.load(sys.argv[2])\n"
        "rss = lambda: int(Path('/proc/self/statm').read_text().split()[1]) * 4096\n"
        "warm = FaceIndex.build(ids[:12000], rows[:12000]); del warm  # BLAS buffers: per process, not per template\n"
        "before = rss(); index = FaceIndex.build(ids, rows, exact=sys.argv[3] == '1'); print(rss() - before)"
    )
    command = [sys.executable, "-c", code, str(folder / "rows.npy"), str(folder / "ids.npy"), "1" if exact else "0"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def _snapshot_open(location: str) -> tuple[float, int, int]:
    """Open the gallery from its snapshot in a fresh process, as Gallery._current_index does:
    seconds from opening the store to the index ready, the memory that added, and the index size."""
    code = (
        "import sys, time; from pathlib import Path\n"
        "from consentmatch.search import snapshot; from consentmatch.settings import Settings\n"
        "from consentmatch.storage import KeyRing, open_store\n"
        "import faiss, numpy, cryptography.hazmat.primitives.ciphers, consentmatch.storage.postgres  # code, not per template\n"
        "rss = lambda: int(Path('/proc/self/statm').read_text().split()[1]) * 4096\n"
        "before = rss(); start = time.perf_counter(); settings = Settings.from_env()\n"
        "store = open_store(sys.argv[1], KeyRing(settings=settings), settings)\n"
        "with store.read() as tx:\n"
        "    index = snapshot.load(snapshot.path_for(store.path), store.keys,\n"
        "                          tx.templates_state(), tx.generation())\n"
        "print(time.perf_counter() - start, rss() - before, -1 if index is None else len(index))"
    )
    done = subprocess.run([sys.executable, "-c", code, location], capture_output=True, text=True, check=True)
    seconds, memory, count = done.stdout.split()[-3:]
    return float(seconds), int(memory), int(count)


def _timed_searches(
    index: FaceIndex, probes: NDArray[np.float32], k: int, allowed: NDArray[np.int64]
) -> tuple[list[float], NDArray[np.int64]]:
    for probe in probes[:5]:  # warm caches and the selector
        index.search(probe[None], k, allowed)
    times, found = [], []
    for probe in probes:
        start = time.perf_counter()
        _, ids = index.search(probe[None], k, allowed)
        times.append(time.perf_counter() - start)
        found.append(ids[0])
    return times, np.array(found)


def _exact_nearest(rows: NDArray[np.float32], ids: NDArray[np.int64], probes: NDArray[np.float32]) -> NDArray[np.int64]:
    import faiss

    flat = faiss.IndexFlatL2(DIMENSIONS)
    flat.add(rows)
    _, nearest = flat.search(probes, 1)
    return ids[nearest[:, 0]]


def _face_distance_ms(rows: NDArray[np.float32], probes: NDArray[np.float32], budget_s: float = 10.0) -> list[float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # face_recognition_models imports pkg_resources
        import face_recognition

    times: list[float] = []
    for probe in probes:
        start = time.perf_counter()
        face_recognition.face_distance(rows, probe)
        times.append((time.perf_counter() - start) * 1000)
        if len(times) >= 3 and sum(times) > budget_s * 1000:
            break
    return times


def run(
    size: int | None,
    queries: int,
    data: Path | None,
    probes_file: Path | None,
    exact: bool,
    nprobe: int | None,
    gallery: str | None = None,
    copy_from: Path | None = None,
) -> dict[str, Any]:
    if data is not None:
        source = np.load(data, mmap_mode="r")
        size = len(source) if size is None else size
        if source.ndim != 2 or source.shape[1] != DIMENSIONS or size > len(source):
            raise SystemExit(f"{data}: need an (N, {DIMENSIONS}) array with at least {size} rows, got {source.shape}")
        rows = np.ascontiguousarray(source[:size], dtype=np.float32)
    else:
        rows = synthetic_templates(size or 10_000)
    size = len(rows)
    if probes_file is not None:
        probes = np.ascontiguousarray(np.load(probes_file)[:queries], dtype=np.float32).reshape(-1, DIMENSIONS)
    else:
        probes, _ = second_photos(rows, queries, seed=1)
    ids = np.arange(1, size + 1, dtype=np.int64)  # a fresh store numbers rows 1..N in insertion order
    subset_rows = np.flatnonzero((np.arange(size) // PER_SUBJECT) % SUBSET_EVERY == 0)
    subset_probes, _ = second_photos(rows[subset_rows], queries, seed=2)

    with tempfile.TemporaryDirectory(prefix="consentmatch-bench-") as folder:
        location = gallery or str(Path(folder) / "gallery.db")
        if is_url(location):  # the keys and this node's snapshot in the temporary folder (unless set)
            os.environ.setdefault("CONSENTMATCH_KEY_DIR", str(Path(folder) / "keys"))
            os.environ.setdefault("CONSENTMATCH_CACHE_DIR", str(Path(folder) / "cache"))
        else:
            os.environ["CONSENTMATCH_KEY_DIR"] = location + ".keys"  # where a sealing store keeps its keys
        start = time.perf_counter()
        copy_s = 0.0
        if not make_store(location).exists():
            if is_url(location):  # PostgreSQL: filled as a file, then moved up as a customer would (`copy`)
                filled = str(copy_from or Path(folder) / "fill.db")
                if copy_from is None:
                    fill_store(filled, rows)
                copied = time.perf_counter()
                copy_gallery(filled, location, Settings.from_env())
                copy_s = time.perf_counter() - copied
            else:
                fill_store(location, rows)
        fill_s = time.perf_counter() - start
        store = make_store(location)
        stored_bytes = store_bytes(location, store)
        path = store.path  # the snapshot's place: beside the file, or in this node's cache folder

        # Open without a snapshot, as Gallery._current_index does then: every template, then the index.
        import faiss  # noqa: F401  # loaded before measuring: its ~35 MB of code are not per template

        snapshot.discard(snapshot.path_for(path))
        start = time.perf_counter()
        with store.read() as tx:
            generation = tx.generation()
            template_ids, vectors = tx.all_templates()
            read_s = time.perf_counter() - start
            index = FaceIndex(generation, exact=exact)
            index.add(template_ids, vectors)
        rebuild_s = time.perf_counter() - start
        if not np.array_equal(template_ids, ids):
            raise SystemExit(f"{path} does not hold these {size} templates as rows 1..N: name a new --gallery file")
        del template_ids, vectors
        gc.collect()
        index_bytes = _index_memory(Path(folder), rows, ids, exact)

        # Save the snapshot as Gallery.close does, then open from it.
        start = time.perf_counter()
        with store.write(bump=False) as tx:
            snapshot.save(snapshot.path_for(path), index, store.keys, tx.templates_state())
        save_s = time.perf_counter() - start
        snapshot_bytes = snapshot.path_for(path).stat().st_size
        open_s, open_bytes, loaded = _snapshot_open(location)
        if loaded != size:
            raise SystemExit(f"the snapshot of {path} did not open ({loaded})")

        start = time.perf_counter()
        with store.read() as tx:  # what Gallery.match asks next: who may be searched for the purpose
            searchable = tx.searchable(PURPOSE, datetime.now(timezone.utc))
            subset = tx.searchable(SUBSET_PURPOSE, datetime.now(timezone.utc))
        searchable_s = time.perf_counter() - start
        store.close()

    for allowed in (searchable.template_ids, subset.template_ids):
        allowed.setflags(write=False)  # the gallery's Searchable arrays are fixed per generation
    if nprobe is not None:
        index.nprobe = nprobe
    k = TOP_K * searchable.max_per_subject  # as Gallery.match asks, for top-k distinct subjects
    times, found = _timed_searches(index, probes, k, searchable.template_ids)
    exact_top1 = _exact_nearest(rows, ids, probes)
    subset_times, subset_found = _timed_searches(index, subset_probes, k, subset.template_ids)
    subset_exact = _exact_nearest(rows[subset_rows], ids[subset_rows], subset_probes)
    outside = int(np.count_nonzero(~np.isin(subset_found[subset_found >= 0], subset.template_ids)))
    baseline = _face_distance_ms(rows, probes)

    p50 = float(np.percentile(times, 50) * 1000)
    return {
        "size": size,
        "index": index.params.description,
        "nlist": index.params.nlist,
        "nprobe": index.params.nprobe,
        "queries": len(probes),
        "p50_ms": round(p50, 3),
        "p99_ms": round(float(np.percentile(times, 99) * 1000), 3),
        "recall_at_1": round(float(np.mean(found[:, 0] == exact_top1)), 4),
        "filtered_share": round(len(subset.template_ids) / size, 4),
        "filtered_p50_ms": round(float(np.percentile(subset_times, 50) * 1000), 3),
        "filtered_recall_at_1": round(float(np.mean(subset_found[:, 0] == subset_exact)), 4),
        "filtered_outside": outside,
        "open_s": round(open_s, 3),
        "rebuild_s": round(rebuild_s, 3),
        "read_s": round(read_s, 3),
        "build_s": round(rebuild_s - read_s, 3),
        "save_s": round(save_s, 3),
        "searchable_s": round(searchable_s, 3),
        "fill_s": round(fill_s, 1),
        "copy_s": round(copy_s, 1),
        "store": "postgresql" if is_url(location) else "sqlite",
        "store_bytes": stored_bytes,
        "index_bytes": index_bytes,
        "snapshot_bytes": snapshot_bytes,
        "open_rss_bytes": open_bytes,
        "bytes_per_template": round((stored_bytes + index_bytes) / size, 1),
        "memory_per_template": round(open_bytes / size, 1),
        "disk_per_template": round((stored_bytes + snapshot_bytes) / size, 1),
        "face_distance_p50_ms": round(float(np.percentile(baseline, 50)), 3),
        "face_distance_queries": len(baseline),
        "speedup": round(float(np.percentile(baseline, 50)) / p50, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, help="templates in the gallery (default 10000, or every row of --data)")
    parser.add_argument("--queries", type=int, default=200, help="probes to time (default 200)")
    parser.add_argument("--data", type=Path, help="an (N, 128) float32 .npy of templates instead of synthetic ones")
    parser.add_argument("--probes", type=Path, help="a (Q, 128) float32 .npy of probes instead of noisy copies")
    parser.add_argument("--exact", action="store_true", help="exhaustive search whatever the size")
    parser.add_argument("--nprobe", type=int, help="override the IVF lists scanned per query (for tuning)")
    parser.add_argument("--gallery", help="keep the filled gallery here and reuse it when it exists (keys beside it), "
                                          "or a postgresql:// URL")
    parser.add_argument("--copy-from", type=Path,
                        help="with a postgresql:// --gallery: copy this gallery file, filled by an earlier run "
                             "(--gallery FILE, same --size), instead of filling one (its keys: CONSENTMATCH_KEY_DIR)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = run(args.size, args.queries, args.data, args.probes, args.exact, args.nprobe, args.gallery, args.copy_from)
    report(result, args.json)


if __name__ == "__main__":
    main()
