"""Several machines, one gallery: enrollment throughput with 1 and 2 writer processes, and how
long an erasure committed on one node takes to leave another node's index.

Each writer is a process with its own `Gallery` on the same gallery, enrolling its share of N
subjects (one photo each) through `Gallery.enroll`: consent, opt-out and duplicate checks,
the sealed template, the audit event, one write transaction. The photo work is a stand-in
(a solid square's colour picks a synthetic template), so what is timed is the gallery's side
of enrollment, the part the writers share. Run against PostgreSQL (a new database per run,
created on the server of `--gallery`) and, for comparison, an SQLite file.

Erasure: a watcher process opens the gallery, searches once (its index is built), then only
watches its live index, without searching, while this process forgets subjects one by one:
`erasure_ms` is the time from `forget` returning here to the entry leaving the watcher's
index (LISTEN/NOTIFY and the catch-up from the change log). A search started after the
erasure never finds the subject whatever this time is: each search catches up first
(tests/test_postgres.py).

    uv run python benchmarks/nodes.py --gallery "postgresql:///postgres?host=/run/postgresql" --subjects 400 --json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from PIL import Image
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from _report import report  # benchmarks/ is on sys.path when a script runs

PURPOSE = "visitor-check-in"

#: A writer or the watcher: run as `python nodes.py --node ROLE LOCATION ...` by `run`.
HERE = Path(__file__).resolve()


class SquareEncoder:
    """A photo's one face is a solid square: its colour is the person, whose template is synthetic."""

    def encode(self, photo: Any, min_face_px: int) -> list[Any]:
        from consentmatch.results import Box
        from consentmatch.vision.types import DetectedFace

        red, green, blue = (int(c) for c in photo.pixels[60, 60])
        person = red + 256 * green + 65536 * blue
        vector = np.random.default_rng(person).standard_normal(128).astype(np.float32)
        return [DetectedFace(box=Box(20, 100, 100, 20), encoding=vector / np.linalg.norm(vector))]


def photo(person: int) -> bytes:
    pixels = np.zeros((120, 120, 3), dtype=np.uint8)
    pixels[20:100, 20:100] = (person % 256, (person // 256) % 256, person // 65536)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def writer(location: str, first: int, count: int) -> None:
    """Enroll `count` people from `first` on, from the start time the parent sends once all writers are ready."""
    from consentmatch import Consent, Gallery

    photos = {p: photo(p) for p in range(first, first + count)}
    with Gallery(location, encoder=SquareEncoder(), actor=f"writer-{first}") as gallery:
        gallery.subjects()  # connected and opened before the clock starts
        print("ready", flush=True)
        time.sleep(max(0.0, float(sys.stdin.readline()) - time.time()))
        for person, data in photos.items():
            gallery.enroll(f"p{person}", data, Consent(f"R{person}", [PURPOSE]))
    print(json.dumps({"done": time.time()}), flush=True)


def watcher(location: str, ids: list[int], timeout: float) -> None:
    """Report when each template id leaves this node's live index (polled, no search)."""
    from consentmatch import Gallery

    with Gallery(location, encoder=SquareEncoder(), actor="watcher") as gallery:
        gallery.match(photo(1), purpose=PURPOSE)
        index = gallery._ctx.cache.live
        assert index is not None
        print("ready", flush=True)
        gone: dict[int, float] = {}
        deadline = time.time() + timeout
        while len(gone) < len(ids) and time.time() < deadline:
            index = gallery._ctx.cache.live or index
            for template_id in ids:
                if template_id not in gone and not index.contains(template_id):
                    gone[template_id] = time.time()
            time.sleep(0.001)
    print(json.dumps(gone), flush=True)


def database(base: str, name: str) -> str:
    """A new empty database `name` on the server of `base` (dropped first if left by a run before)."""
    drop(base, name)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _url_of(base, name)


def drop(base: str, name: str) -> None:
    """Drop the gallery database `name` and its keys database on the server of `base`."""
    with psycopg.connect(base, autocommit=True) as conn:
        for database in (name, f"{name}_keys"):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)))


def _node(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(HERE), "--node", *map(str, args)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def throughput(location: str, subjects: int, writers: int) -> float:
    """Subjects enrolled per second by `writers` processes at once, `subjects` in all."""
    share = subjects // writers
    processes = [_node("writer", location, 1 + w * share, share) for w in range(writers)]
    for process in processes:  # every writer has imported and connected: one start time for all
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise SystemExit(f"a writer failed:\n{process.communicate()[1]}")
    start_at = time.time() + 0.2
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(f"{start_at}\n")
        process.stdin.flush()
    ends = []
    for process in processes:
        out, err = process.communicate(timeout=1800)
        if process.returncode != 0:
            raise SystemExit(f"a writer failed:\n{err}")
        ends.append(json.loads(out.splitlines()[-1])["done"])
    return share * writers / (max(ends) - start_at)


def erasure_times(location: str, rounds: int) -> list[float]:
    """Milliseconds from `forget` returning here to the template leaving another node's index."""
    from consentmatch import Gallery

    with Gallery(location, encoder=SquareEncoder(), actor="eraser") as gallery:
        names = [f"p{p}" for p in range(2, 2 + rounds)]
        ids = [int(gallery.export(name)["templates"][0]["id"]) for name in names]
        watch = _node("watcher", location, ",".join(map(str, ids)), 60)
        assert watch.stdout is not None
        if watch.stdout.readline().strip() != "ready":
            raise SystemExit(f"the watcher failed:\n{watch.communicate()[1]}")
        returned = []
        for name in names:
            gallery.forget(name)
            returned.append(time.time())
            time.sleep(0.3)
    out, err = watch.communicate(timeout=120)
    gone = {int(k): v for k, v in json.loads(out.splitlines()[-1]).items()}
    if len(gone) != len(ids):
        raise SystemExit(f"the watcher's index kept {len(ids) - len(gone)} erased template(s):\n{err}")
    return [(gone[i] - t) * 1000 for i, t in zip(ids, returned)]


def run(base: str, subjects: int, rounds: int) -> dict[str, Any]:
    result: dict[str, Any] = {"subjects": subjects}
    os.environ["CONSENTMATCH_QUALITY"] = "off"  # the squares are not photos
    with tempfile.TemporaryDirectory(prefix="consentmatch-nodes-") as folder:
        os.environ.setdefault("CONSENTMATCH_KEY_DIR", str(Path(folder) / "keys"))
        os.environ.setdefault("CONSENTMATCH_CACHE_DIR", str(Path(folder) / "cache"))
        name = f"cm_nodes_{os.getpid()}"
        for writers in (1, 2):
            result[f"postgresql_{writers}_writer_per_s"] = round(throughput(database(base, f"{name}_{writers}"), subjects, writers), 1)
            result[f"sqlite_{writers}_writer_per_s"] = round(throughput(str(Path(folder) / f"w{writers}.db"), subjects, writers), 1)
        result["postgresql_2_vs_1"] = round(result["postgresql_2_writer_per_s"] / result["postgresql_1_writer_per_s"], 2)
        result["sqlite_2_vs_1"] = round(result["sqlite_2_writer_per_s"] / result["sqlite_1_writer_per_s"], 2)
        times = erasure_times(_url_of(base, f"{name}_1"), rounds)  # the gallery the single writer filled
        result["erasure_rounds"] = len(times)
        result["erasure_ms_p50"] = round(float(np.percentile(times, 50)), 1)
        result["erasure_ms_max"] = round(max(times), 1)
        for writers in (1, 2):
            drop(base, f"{name}_{writers}")
    return result


def _url_of(base: str, name: str) -> str:
    """The URL of database `name` on the server (and as the user) of `base`."""
    info = conninfo_to_dict(make_conninfo(base, dbname=name))
    query = "&".join(f"{k}={v}" for k, v in info.items() if k != "dbname")
    return f"postgresql:///{name}" + (f"?{query}" if query else "")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--node":
        role, location, *rest = argv[1:]
        if role == "writer":
            writer(location, int(rest[0]), int(rest[1]))
        else:
            watcher(location, [int(i) for i in rest[0].split(",")], float(rest[1]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gallery", required=True,
                        help="a postgresql:// URL of the server (its database is only used to create new ones)")
    parser.add_argument("--subjects", type=int, default=400, help="subjects enrolled per run (default 400)")
    parser.add_argument("--rounds", type=int, default=10, help="erasures timed (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report(run(args.gallery, args.subjects, args.rounds), args.json)


if __name__ == "__main__":
    main()
