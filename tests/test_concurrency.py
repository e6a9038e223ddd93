"""Several processes and threads on one gallery: no corruption, readers see whole enrollments.

Processes run the installed CLI (`import`) or the public API, with the fake encoder of
test_crash.py written next to the gallery (monkeypatching does not reach a subprocess); the
environment is inherited, so the gallery key reaches them too.

Readers match a probe holding every person: the exact photos of subjects that are never
erased (found at distance 0, so their template count can be read off one match call, one
snapshot), and an unenrolled photo variant of subjects that come and go, with a tight
tolerance so those are listed as candidates but never returned as the match (a match that
returns a subject being erased hits the bug pinned by
`test_match_returning_a_subject_erased_meanwhile`). `subjects()` is one snapshot too: a
subject enrolled from 3 photos at once is seen with 0 or 3 templates, never 1 or 2.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import pytest

from consentmatch import Consent, ConsentMatchError, Gallery, StorageError

from .test_crash import _load_fake

PURPOSE = "door"
BATCH = 3  # photos per enrollment of the API writer

#: The installed command with the fake encoder: `python -c CLI FOLDER <consentmatch arguments>`.
CLI = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); import crashfake, consentmatch.vision as e; "
    "e.default_encoder = lambda settings=None: crashfake.FakeEncoder(); from consentmatch.cli import main; main()"
)

#: Matches in a loop until the stop file appears; one JSON line per round: what one match
#: call found at distance 0 (one snapshot), and what subjects() said.
READER = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from crashfake import VARIANTS, FakeEncoder, probe_bytes
from consentmatch import Gallery

folder, gallery_path, stop = sys.argv[1], sys.argv[2], sys.argv[3]
kept, coming_and_going = json.loads(sys.argv[4]), json.loads(sys.argv[5])
faces = [(p, v) for p in kept for v in range(VARIANTS)] + [(p, VARIANTS - 1) for p in coming_and_going]
probe, corners = probe_bytes(faces)
with Gallery(gallery_path, encoder=FakeEncoder(), actor="reader") as gallery:
    print("ready", flush=True)
    while not os.path.exists(stop):
        counts, listed = {}, set()
        for face in gallery.match(probe, purpose="door", tolerance=0.05, top_k=1000).faces:
            person, variant = corners[(face.box.top, face.box.left)]
            exact = [c.subject for c in face.candidates if c.distance < 1e-4]
            assert exact in ([], ["p%d" % person]), (person, variant, exact)
            assert face.subject in (None, "p%d" % person) and (face.subject is None) == (not exact), face
            if exact:
                counts[exact[0]] = counts.get(exact[0], 0) + 1
            listed |= {c.subject for c in face.candidates}
        subjects = {s.subject: s.templates for s in gallery.subjects()}
        print(json.dumps({"match": counts, "listed": sorted(listed), "subjects": subjects}), flush=True)
"""

#: Enrolls subjects from BATCH photos at once, and forgets every other one right after.
BATCH_WRITER = """
import sys
sys.path.insert(0, sys.argv[1])
from crashfake import FakeEncoder, photo_bytes
from consentmatch import Consent, Gallery

folder, gallery_path, first, count, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
with Gallery(gallery_path, encoder=FakeEncoder(), actor="batch-writer") as gallery:
    for person in range(first, first + count):
        name = "p%d" % person
        gallery.enroll(name, [photo_bytes(person, v) for v in range(batch)], Consent("REF-" + name, ["door"]))
        if person % 2:
            gallery.forget(name)
            print("erased " + name, flush=True)
"""


@pytest.fixture
def fake(tmp_path: Path) -> ModuleType:
    return _load_fake(tmp_path)


def _manifest(folder: Path, fake: ModuleType, people: range, photos: int, name: str) -> Path:
    rows = []
    for person in people:
        for variant in range(photos):
            photo = folder / f"p{person}_v{variant}.png"
            photo.write_bytes(fake.photo_bytes(person, variant))
            rows.append(f"p{person},{photo.name},REF-p{person},{PURPOSE}")
    path = folder / name
    path.write_text("subject,photo,consent_ref,purposes\n" + "\n".join(rows) + "\n")
    return path


def _cli(folder: Path, *args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CLI, str(folder), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # the environment is inherited: CONSENTMATCH_KEY and friends reach the child


def _python(script: Path, *args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"{process.args!r} did not finish in {timeout} s:\n{err}")
    return out, err


def _check_file(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute(
            "SELECT count(*) FROM templates t LEFT JOIN subjects s ON s.id = t.subject_id WHERE s.id IS NULL"
        ).fetchone() == (0,)
    finally:
        conn.close()


def test_import_and_batch_writer_while_readers_match(tmp_path: Path, fake: ModuleType) -> None:
    gallery_path, stop = tmp_path / "shared.db", tmp_path / "stop"
    imported, batched = range(100, 116), range(200, 212)
    with Gallery(gallery_path, encoder=fake.FakeEncoder()) as gallery:
        gallery.enroll("p1", [fake.photo_bytes(1, 0)], Consent("REF-p1", [PURPOSE]))
        gallery.set_policy("max_top_k", 1000)  # the readers list every subject
    manifest = _manifest(tmp_path, fake, imported, 2, "import.csv")
    (tmp_path / "reader.py").write_text(READER)
    (tmp_path / "writer.py").write_text(BATCH_WRITER)
    kept, coming = json.dumps([1, *imported]), json.dumps(list(batched))
    readers = [_python(tmp_path / "reader.py", tmp_path, gallery_path, stop, kept, coming) for _ in range(2)]
    try:
        for reader in readers:
            assert reader.stdout is not None and reader.stdout.readline() == "ready\n", _finish(reader)[1]
        importer = _cli(tmp_path, "import", manifest, "-g", gallery_path, "--json")
        writer = _python(tmp_path / "writer.py", tmp_path, gallery_path, batched.start, len(batched), BATCH)
        import_out, import_err = _finish(importer)
        writer_out, writer_err = _finish(writer)
    finally:
        stop.touch()
    rounds = []
    for reader in readers:
        out, err = _finish(reader)
        assert reader.returncode == 0, err
        rounds.append([json.loads(line) for line in out.splitlines()])

    assert importer.returncode == 0, import_err
    report = json.loads(import_out)
    assert (report["rows"], len(report["rejected"])) == (2 * len(imported), 0)
    assert writer.returncode == 0, writer_err
    erased = {line.split()[1] for line in writer_out.splitlines()}
    assert len(erased) == len(batched) // 2

    for seen in rounds:
        assert len(seen) >= 3, "the readers should have matched during the writes"
        present: set[str] = set()  # erased subjects this reader has seen enrolled...
        gone: set[str] = set()  # ...and then seen erased: they must never come back
        last: dict[str, int] = {}
        for observed in seen:
            for person in batched:  # whole enrollments only
                assert observed["subjects"].get(f"p{person}", 0) in (0, BATCH), (person, observed["subjects"])
            back = gone & (set(observed["subjects"]) | set(observed["listed"]))
            assert not back, f"erased subjects came back: {back}"
            for person in imported:  # the import only adds
                name = f"p{person}"
                count = observed["match"].get(name, 0)
                assert count >= last.get(name, 0), (name, count, last)
                last[name] = count
            now = erased & set(observed["subjects"])
            gone |= present - now
            present |= now

    _check_file(gallery_path)
    with Gallery(gallery_path, encoder=fake.FakeEncoder()) as gallery:
        assert gallery.verify_audit().intact
        subjects = {s.subject: s.templates for s in gallery.subjects()}
    expected = {"p1": 1} | {f"p{p}": 2 for p in imported} | {f"p{p}": BATCH for p in batched if f"p{p}" not in erased}
    assert subjects == expected


def test_two_cli_writers_at_once_both_succeed(tmp_path: Path, fake: ModuleType) -> None:
    gallery_path = tmp_path / "two.db"
    first = _manifest(tmp_path, fake, range(300, 312), 1, "first.csv")
    second = _manifest(tmp_path, fake, range(400, 412), 1, "second.csv")
    writers = [_cli(tmp_path, "import", manifest, "-g", gallery_path, "--json") for manifest in (first, second)]
    results = [_finish(writer) for writer in writers]
    for writer, (out, err) in zip(writers, results):
        assert writer.returncode == 0, err
        assert json.loads(out)["rejected"] == []
    _check_file(gallery_path)
    with Gallery(gallery_path, encoder=fake.FakeEncoder()) as gallery:
        check = gallery.verify_audit()
        assert check.intact, check.problem  # the hash chain stays one chain with two writers
        assert sorted(s.subject for s in gallery.subjects()) == sorted(f"p{p}" for p in [*range(300, 312), *range(400, 412)])


@pytest.fixture
def write_lock(tmp_path: Path, fake: ModuleType) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A gallery whose write lock another connection holds (as a long write by another process would)."""
    path = tmp_path / "locked.db"
    with Gallery(path, encoder=fake.FakeEncoder()) as gallery:
        gallery.enroll("p1", [fake.photo_bytes(1, 0)], Consent("REF-p1", [PURPOSE]))
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    yield path, holder
    if holder.in_transaction:
        holder.execute("ROLLBACK")
    holder.close()


#: The CLI with SQLite's busy timeout cut from 30 s to 1 s, so the test waits 1 s, not 30.
SHORT_BUSY_CLI = (
    "import sys, sqlite3, functools; sys.path.insert(0, sys.argv.pop(1)); "
    "connect = sqlite3.connect; sqlite3.connect = lambda *a, **k: connect(*a, **{**k, 'timeout': 1}); "
    "import crashfake, consentmatch.vision as e; e.default_encoder = lambda settings=None: crashfake.FakeEncoder(); "
    "from consentmatch.cli import main; main()"
)


def test_writer_gets_one_line_locked_error_after_the_busy_timeout(
    tmp_path: Path, fake: ModuleType, write_lock: tuple[Path, sqlite3.Connection]
) -> None:
    path, _ = write_lock
    (tmp_path / "p2_v0.png").write_bytes(fake.photo_bytes(2, 0))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SHORT_BUSY_CLI, str(tmp_path), "enroll", "p2", str(tmp_path / "p2_v0.png"),
         "-g", str(path), "-c", "REF-p2", "-p", PURPOSE],
        capture_output=True, text=True, timeout=120,
    )
    assert time.monotonic() - started >= 1.0  # it waited for the lock before giving up
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "locked" in done.stderr and "retry" in done.stderr
    # Reads are not blocked by a writer (WAL).
    listed = subprocess.run(
        [sys.executable, "-c", SHORT_BUSY_CLI, str(tmp_path), "subjects", "-g", str(path), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert listed.returncode == 0 and json.loads(listed.stdout)["subject"] == "p1", listed.stderr


def test_writer_waits_for_a_short_lock_and_succeeds(write_lock: tuple[Path, sqlite3.Connection], fake: ModuleType) -> None:
    path, holder = write_lock
    releaser = threading.Timer(1.0, lambda: holder.execute("ROLLBACK"))
    releaser.start()
    try:
        with Gallery(path, encoder=fake.FakeEncoder()) as gallery:
            started = time.monotonic()
            gallery.enroll("p2", [fake.photo_bytes(2, 0)], Consent("REF-p2", [PURPOSE]))
            assert time.monotonic() - started >= 0.5
            assert {s.subject for s in gallery.subjects()} == {"p1", "p2"}
    finally:
        releaser.join()


def test_api_write_under_a_held_lock_is_a_storage_error(
    monkeypatch: pytest.MonkeyPatch, write_lock: tuple[Path, sqlite3.Connection], fake: ModuleType
) -> None:
    path, _ = write_lock
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: connect(*a, **{**k, "timeout": 0.2}))
    with Gallery(path, encoder=fake.FakeEncoder()) as gallery:
        with pytest.raises(StorageError, match="locked.*retry"):
            gallery.forget("p1")
        assert [s.subject for s in gallery.subjects()] == ["p1"]  # the failed write changed nothing


# -- threads in one process ------------------------------------------------------------------


def test_threads_search_while_others_enroll_and_forget(tmp_path: Path, fake: ModuleType) -> None:
    """Matches, verifications and listings in threads, while two galleries on the file write.

    A match that starts after forget() has returned never lists that subject; every
    snapshot holds whole enrollments.
    """
    path = tmp_path / "threads.db"
    stable = range(1, 6)
    churn = range(500, 530)
    main = Gallery(path, encoder=fake.FakeEncoder(), actor="main")
    other = Gallery(path, encoder=fake.FakeEncoder(), actor="other")  # a second connection in this process
    for person in stable:
        main.enroll(f"p{person}", [fake.photo_bytes(person, v) for v in range(2)], Consent(f"REF-p{person}", [PURPOSE]))
    main.set_policy("max_top_k", 1000)  # the searchers list every subject
    last = fake.VARIANTS - 1  # never enrolled: churn subjects are candidates, never the match (see the docstring)
    probe, corners = fake.probe_bytes([(p, v) for p in stable for v in range(2)] + [(p, last) for p in churn])
    forgotten: dict[str, float] = {}
    errors: list[BaseException] = []
    done = threading.Event()

    def searcher(gallery: Gallery) -> None:
        try:
            while not done.is_set():
                started = time.monotonic()
                found: dict[str, int] = {}
                for face in gallery.match(probe, purpose=PURPOSE, tolerance=0.05, top_k=1000).faces:
                    person, _ = corners[(face.box.top, face.box.left)]
                    exact = [c.subject for c in face.candidates if c.distance < 1e-4]
                    assert exact == ([f"p{person}"] if person in stable else []), (person, exact)
                    listed = {c.subject for c in face.candidates}
                    stale = {n for n, at in list(forgotten.items()) if at < started} & listed
                    assert not stale, f"forgotten subjects listed: {stale}"
                    if exact:
                        found[exact[0]] = found.get(exact[0], 0) + 1
                assert found == {f"p{p}": 2 for p in stable}, found
                verdict = gallery.verify("p1", fake.photo_bytes(1, 0), purpose=PURPOSE)
                assert verdict.match and verdict.distance < 1e-4
                started = time.monotonic()
                held = {s.subject: s.templates for s in gallery.subjects()}
                assert all(held.get(f"p{p}") == 2 for p in stable), held
                assert all(held.get(f"p{p}", 0) in (0, BATCH) for p in churn), held  # whole enrollments
                stale = {n for n, at in list(forgotten.items()) if at < started} & set(held)
                assert not stale, f"forgotten subjects listed: {stale}"
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            done.set()

    def writer(gallery: Gallery, people: range) -> None:
        try:
            for person in people:
                if done.is_set():
                    return
                name = f"p{person}"
                gallery.enroll(name, [fake.photo_bytes(person, v) for v in range(BATCH)], Consent(f"REF-{name}", [PURPOSE]))
                if person % 3 == 0:
                    receipt = gallery.forget(name)
                    forgotten[name] = time.monotonic()
                    assert receipt.verified and receipt.templates_removed == BATCH
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            done.set()

    threads = [threading.Thread(target=searcher, args=(g,)) for g in (main, main, other)]
    writers = [
        threading.Thread(target=writer, args=(main, churn[::2])),
        threading.Thread(target=writer, args=(other, churn[1::2])),
    ]
    for thread in threads + writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=120)
    done.set()
    for thread in threads:
        thread.join(timeout=60)
    main.close()
    other.close()
    if errors:
        raise errors[0]
    with Gallery(path, encoder=fake.FakeEncoder()) as gallery:
        held = {s.subject: s.templates for s in gallery.subjects()}
        assert gallery.verify_audit().intact
    expected = {f"p{p}": 2 for p in stable} | {f"p{p}": BATCH for p in churn if p % 3}
    assert held == expected
    _check_file(path)


def test_match_returning_a_subject_erased_meanwhile(gallery_location: str, fake: ModuleType) -> None:
    """A match that found alice while another process erased her returns its result, or a clean error
    (on both stores: on PostgreSQL the erasure commits while the search's read is open)."""
    calls: list[int] = []  # clock reads since armed: the 1st is inside the search's read, the 2nd before the audit write

    def clock() -> datetime:
        if calls:
            calls.append(1)
            if len(calls) == 3:
                other.forget("alice")
        return datetime.now(timezone.utc)

    desk = Gallery(gallery_location, encoder=fake.FakeEncoder(), clock=clock)
    other = Gallery(gallery_location, encoder=fake.FakeEncoder())
    try:
        desk.enroll("alice", [fake.photo_bytes(7, 0)], Consent("REF-A", [PURPOSE]))
        calls.append(1)
        try:
            result = desk.match(fake.photo_bytes(7, 0), purpose=PURPOSE)
        except ConsentMatchError:
            pass  # a clean error is acceptable too
        else:
            assert result.faces[0].subject in ("alice", None)
        assert [s.subject for s in other.subjects()] == []
    finally:
        desk.close()
        other.close()


#: Opens the gallery once, says "ready", then enrolls one subject after another.
ENROLLER = """
import sys
sys.path.insert(0, sys.argv[1])
from crashfake import FakeEncoder, photo_bytes
from consentmatch import Consent, Gallery

folder, gallery_path, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with Gallery(gallery_path, encoder=FakeEncoder(), actor="enroller") as gallery:
    gallery.subjects()  # the gallery key is loaded now, before any rotation
    print("ready", flush=True)
    for person in range(first, first + count):
        gallery.enroll("p%d" % person, [photo_bytes(person, 0)], Consent("REF-p%d" % person, ["door"]))
"""


def test_key_rotations_while_another_process_enrolls(tmp_path: Path, fake: ModuleType) -> None:
    """Each enrollment wraps a new data key: under the key that is current then, never under one
    a rotation in this process has replaced (issue 12 A: the gallery broke for good)."""
    from consentmatch.crypto import unseal
    from consentmatch.storage.keyring import KeyRing

    path = tmp_path / "rotating.db"
    with Gallery(path, encoder=fake.FakeEncoder()) as gallery:
        gallery.enroll("p1", [fake.photo_bytes(1, 0)], Consent("REF-p1", [PURPOSE]))
        gallery_id = gallery.key_info().gallery_id
    (tmp_path / "enroller.py").write_text(ENROLLER)
    people = range(100, 140)
    enroller = _python(tmp_path / "enroller.py", tmp_path, path, people.start, len(people))
    assert enroller.stdout is not None and enroller.stdout.readline() == "ready\n", _finish(enroller)[1]
    rotations = 0
    while enroller.poll() is None and rotations < 30:
        with Gallery(path, encoder=fake.FakeEncoder(), actor="rotator") as rotator:
            rotator.rotate_key()
        rotations += 1
        time.sleep(0.01)
    _, err = _finish(enroller)
    assert enroller.returncode == 0, err
    assert rotations >= 2, "the rotations should have overlapped the enrollments"

    ring = KeyRing()  # the key file's key now
    ring.open(gallery_id, created=True, create=False)
    kek, conn = ring._kek, ring._conn
    assert kek is not None and conn is not None
    unopenable = [k for k, w in conn.execute("SELECT key_id, wrapped FROM deks") if unseal(kek, w, k.encode()) is None]
    ring.close()
    assert unopenable == [], "data keys wrapped under a gallery key that no longer exists"
    with Gallery(path, encoder=fake.FakeEncoder()) as gallery:
        assert {s.subject: s.templates for s in gallery.subjects()} == {f"p{p}": 1 for p in [1, *people]}
        probe, corners = fake.probe_bytes([(p, 0) for p in [1, *people]])
        assert all(f.subject == f"p{corners[(f.box.top, f.box.left)][0]}" for f in gallery.match(probe, purpose=PURPOSE).faces)
        assert [e.action for e in gallery.audit()].count("key-rotate") == rotations
        assert gallery.verify_audit().intact
