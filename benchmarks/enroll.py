"""Enrollment at scale: photos/s of `consentmatch import`, locally and on Ray with 1 and 2 workers,
the driver's commit rate alone, and a projection for a cluster of N machines.

Whole processes: each import is `consentmatch import MANIFEST --allow-duplicate --json [--ray
ADDRESS]` into a fresh gallery, on a manifest of the example photos repeated `--copies` times
under new names (so every row is real photo work). Ray runs are children connected to a Ray
started here (`ray.init(num_cpus=W)`: W one-CPU workers), as a cluster that is already up.

Each configuration runs the manifest and a one-row manifest: `photos_per_s` is rows over the
whole process (start-up, models, Ray actors included); `marginal_photos_per_s` is the extra
rows over the extra time, the rate a long import runs at. The commit rate is measured alone,
in this process: the same import code on synthetic faces, with a runner that hands back ready
results, so only the driver's work is timed (admission, duplicate check, the write transaction
and audit event of each row) on a gallery growing to `--commit-rows` templates.

The projection: M machines of `--cpus-per-machine` workers each reach
min(M x cpus x per-worker rate, commit rate): the per-worker rate is Ray's 1-worker marginal
rate; where the product passes the commit rate, the driver is the ceiling.

    uv run python benchmarks/enroll.py [--copies 4] [--commit-rows 1000] [--cpus-per-machine 16] [--json]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from consentmatch import Gallery
from consentmatch.results import Box
from consentmatch.services import enrollment
from consentmatch.vision.types import DetectedFace
from _report import report  # benchmarks/ is on sys.path when a script runs
from nodes import database as _database, drop as _drop

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PURPOSE = "visitor-check-in"
MACHINES = (1, 2, 4, 8, 16, 32, 64)

T = TypeVar("T")
S = TypeVar("S")


def _manifest(path: Path, copies: int, limit: int | None = None) -> int:
    """The examples' rows (the first `limit`), `copies` times under new names and references; returns the row count."""
    with open(EXAMPLES / "consents.csv", newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        columns, rows = list(reader.fieldnames or ()), list(reader)[:limit]
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        for copy in range(copies):
            for row in rows:
                evidence = str(EXAMPLES / row["evidence"]) if row["evidence"] else ""
                writer.writerow({**row, "subject": f"{row['subject']}-{copy}", "photo": str(EXAMPLES / row["photo"]),
                                 "consent_ref": f"{row['consent_ref']}-{copy}", "evidence": evidence})
    return copies * len(rows)


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"'{name}' not found: run this with `uv run python benchmarks/enroll.py`.")
    return found


def _import_s(manifest: Path, gallery: Path, env: dict[str, str], extra: Sequence[str]) -> float:
    """Seconds of one whole `consentmatch import` process; every row must enroll."""
    command = [_tool("consentmatch"), "import", str(manifest), "-g", str(gallery), "--allow-duplicate", "--json", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0 or json.loads(done.stdout)["rejected"]:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {(done.stderr or done.stdout)[-800:]}")
    return elapsed


def _rates(rows: int, many_s: float, one_s: float) -> dict[str, float]:
    return {"s": round(many_s, 2), "one_row_s": round(one_s, 2), "photos_per_s": round(rows / many_s, 2),
            "marginal_photos_per_s": round((rows - 1) / max(many_s - one_s, 1e-9), 2)}


def _measure(work: Path, label: str, rows: int, env: dict[str, str], extra: Sequence[str]) -> dict[str, float]:
    one_s = _import_s(work / "one.csv", work / f"{label}-one.db", env, extra)
    many_s = _import_s(work / "many.csv", work / f"{label}-many.db", env, extra)
    return _rates(rows, many_s, one_s)


@contextmanager
def _ray(workers: int) -> Iterator[str]:
    """A Ray of `workers` CPUs started by this process (never `ray stop`: other Rays may run here)."""
    os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"  # under `uv run`: no packaging of this folder for the workers
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _ray_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with what ray.init set for its clients here (RAY_AUTH_MODE=token: the token is in ~/.ray)."""
    return {**env, **{k: v for k, v in os.environ.items() if k.startswith("RAY_")}}


class _Ready:
    """A runner whose photo jobs are done already: synthetic faces, one per job, handed back at once."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(7)

    @contextmanager
    def started(self, items: Sequence[T], start: Callable[[Any, T], S], work: Any, encoder: Any,
                settings: Any) -> Iterator[Iterator[tuple[T, S]]]:
        def submit(job: Any) -> Callable[[], Any]:
            vector = self.rng.normal(size=128)
            face = DetectedFace(Box(10, 110, 110, 10), (vector / np.linalg.norm(vector)).astype(np.float32))
            faces = [(hashlib.sha256(self.rng.bytes(16)).hexdigest(), face)]
            return lambda: faces

        yield ((item, start(submit, item)) for item in items)


def _commit_rate(work: Path, rows: int, location: str) -> dict[str, float]:
    """Rows/s of the driver alone into the gallery at `location` (duplicate rule on: every synthetic
    face is distinct), as it stores them: in batches (`COMMIT_BATCH`) or, the baseline, one by one."""
    manifest = work / "commit.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["subject", "photo", "consent_ref", "purposes", "expires", "jurisdiction"])
        for number in range(rows):
            writer.writerow([f"person-{number}", str(EXAMPLES / "people" / "obama" / "obama.jpg"), f"C-{number}",
                             PURPOSE, "", ""])
    with Gallery(location) as gallery:
        start = time.perf_counter()
        done = gallery.import_manifest(manifest, runner=_Ready())
        elapsed = time.perf_counter() - start
    assert len(done.enrolled) == rows, done.rejected[:3]
    return {"rows": rows, "s": round(elapsed, 2), "rows_per_s": round(rows / elapsed, 1)}


def _commit_rates(work: Path, rows: int, postgres: str | None) -> dict[str, Any]:
    """The driver's commit rate, batched and row by row (the baseline), on SQLite and, with a
    server, PostgreSQL (fresh databases, dropped after)."""
    result: dict[str, Any] = {}
    batch = enrollment.COMMIT_BATCH
    for store in ("sqlite", "postgresql") if postgres else ("sqlite",):
        for label, size in (("batched", batch), ("row_by_row", 1)):
            name = f"cm_commit_{os.getpid()}_{label}"
            location = _database(postgres, name) if postgres and store == "postgresql" else str(work / f"{name}.db")
            enrollment.COMMIT_BATCH = size
            try:
                rate = _commit_rate(work, rows, location)
            finally:
                enrollment.COMMIT_BATCH = batch
                if postgres and store == "postgresql":
                    _drop(postgres, name)
            result[f"commit_{store}_{label}_rows_per_s"] = rate["rows_per_s"]
        result[f"commit_{store}_batched_vs_row_by_row"] = round(
            result[f"commit_{store}_batched_rows_per_s"] / result[f"commit_{store}_row_by_row_rows_per_s"], 2)
    result["commit_rows"] = rows
    result["commit_batch"] = batch
    result["commit_rows_per_s"] = min(v for k, v in result.items() if k.endswith("_batched_rows_per_s"))
    return result


def run(copies: int, commit_rows: int, cpus_per_machine: int, detector: str | None, postgres: str | None,
        commit_only: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="consentmatch-enroll-") as folder:
        work = Path(folder)
        env = {**os.environ, "CONSENTMATCH_KEY_DIR": str(work / "keys"), "PYTHONWARNINGS": "ignore",
               "CONSENTMATCH_QUALITY": "off"}
        for setting in ("CONSENTMATCH_GALLERY", "PYTHONDONTWRITEBYTECODE", "RAY_ADDRESS"):
            env.pop(setting, None)
        os.environ["CONSENTMATCH_KEY_DIR"] = env["CONSENTMATCH_KEY_DIR"]
        os.environ.setdefault("CONSENTMATCH_CACHE_DIR", str(work / "cache"))
        commit = _commit_rates(work, commit_rows, postgres)
        if commit_only:
            return commit
        rows = _manifest(work / "many.csv", copies)
        _manifest(work / "one.csv", 1, limit=1)
        extra = ["--detector", detector] if detector else []
        _import_s(work / "one.csv", work / "warm-up.db", env, extra)  # untimed: .pyc files and the model cache
        local = _measure(work, "local", rows, env, extra)
        with _ray(1) as address:
            ray1 = _measure(work, "ray1", rows, _ray_env(env), [*extra, "--ray", address])
        with _ray(2) as address:
            ray2 = _measure(work, "ray2", rows, _ray_env(env), [*extra, "--ray", address])
    per_worker = ray1["marginal_photos_per_s"]
    ceiling_rate = commit["commit_rows_per_s"]
    projection = {str(m): round(min(m * cpus_per_machine * per_worker, ceiling_rate), 1) for m in MACHINES}
    ceiling = next((m for m in MACHINES if m * cpus_per_machine * per_worker >= ceiling_rate), None)
    return {
        "rows": rows,
        "cpus_here": os.cpu_count(),
        "detector": detector or "hog",
        **{f"local_{k}": v for k, v in local.items()},
        **{f"ray1_{k}": v for k, v in ray1.items()},
        **{f"ray2_{k}": v for k, v in ray2.items()},
        "ray2_over_ray1": round(ray2["marginal_photos_per_s"] / ray1["marginal_photos_per_s"], 2),
        **commit,
        "cpus_per_machine": cpus_per_machine,
        "projected_photos_per_s": projection,
        "commit_ceiling_from_machines": ceiling,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=4, help="the 9 example rows, this many times (default 4)")
    parser.add_argument("--commit-rows", type=int, default=1000, help="rows of the commit-rate run (default 1000)")
    parser.add_argument("--cpus-per-machine", type=int, default=16, help="workers per machine in the projection")
    parser.add_argument("--detector", choices=("hog", "yunet"), help="the import's --detector (default: hog)")
    parser.add_argument("--postgres", metavar="URL",
                        help="a PostgreSQL server (any database's URL) to measure the commit rate on as well")
    parser.add_argument("--commit-only", action="store_true", help="measure the driver's commit rate only")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report(run(args.copies, args.commit_rows, args.cpus_per_machine, args.detector, args.postgres, args.commit_only),
           args.json)


if __name__ == "__main__":
    main()
