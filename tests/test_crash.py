"""Crash safety: SIGKILL at random moments of enroll / import / forget loops, then reopen and check.

Each trial runs a child process that loops through the public API on one gallery (with a fake
encoder, so a step takes milliseconds) and kills it after a random delay. The test process
then reopens the gallery and checks that:

- the store is sound (SQLite: the file passes its integrity checks) with no orphan or dangling row;
- a gallery opened fresh agrees with the store: the exact photo of every stored template is
  found at distance 0 for its subject, no template the store lacks is found, `subjects()`
  counts what matching finds, and purpose filtering lists exactly the consented subjects;
- a gallery kept open across the crashes (a long-lived reader) agrees too;
- an enrollment the child saw return is still there, and an erasure it saw return holds:
  the subject never comes back.

Trials share one gallery, so each child also recovers from the previous crash. The kill
moments come from a seeded RNG: a failure names the seed, and
`CONSENTMATCH_CRASH_SEED=<seed> uv run pytest tests/test_crash.py` replays the same choices
(the kill timing against the child's progress still varies from run to run).

The first test runs on both stores: on PostgreSQL (tests/pg.py) each kill drops a client
mid-transaction. The key-rotation and backup tests are about files (the key file and its
`.next`, a copied gallery file): SQLite only; tests/test_postgres.py kills a PostgreSQL importer.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from consentmatch import Consent, ConsentMatchError, Gallery

from .conftest import STORES

TRIALS = 36
#: Fewer on PostgreSQL (each trial costs seconds: a child's connect, three galleries opened to
#: check); the server keeps its own pages sound, so what is tested is the gallery's transactions.
PG_TRIALS = 8
DOOR, PAYROLL = "door", "payroll"

#: Shared by the child and the test: photos and a fake encoder where every solid-coloured
#: rectangle is a face. Person p, photo variant v is the colour (p % 256, v, p // 256 + 1).
FAKE_MODULE = '''
import io

import numpy as np
from PIL import Image

from consentmatch.vision.types import DetectedFace
from consentmatch.results import Box

VARIANTS = 4


def colour(person, variant):
    return (person % 256, variant, person // 256 + 1)


def person_variant(rgb):
    red, green, blue = rgb
    return red + 256 * (blue - 1), green


def encoding(person, variant):
    base = np.random.default_rng(person).normal(size=128)
    noise = np.random.default_rng(10_000 + variant).normal(size=128)
    vector = base / np.linalg.norm(base) + 0.15 * noise / np.linalg.norm(noise) * (variant > 0)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def photo_bytes(person, variant):
    """An enrollment photo: one 100 px face."""
    image = np.zeros((120, 120, 3), dtype=np.uint8)
    image[10:110, 10:110] = colour(person, variant)
    return _png(image)


def probe_bytes(faces, cell=6, gap=2, columns=40):
    """A probe with many small faces on a grid; returns the bytes and each face's (top, left)."""
    rows = -(-len(faces) // columns) or 1
    step = cell + gap
    image = np.zeros((gap + rows * step, gap + columns * step, 3), dtype=np.uint8)
    corners = {}
    for i, face in enumerate(faces):
        top, left = gap + (i // columns) * step, gap + (i % columns) * step
        image[top : top + cell, left : left + cell] = colour(*face)
        corners[(top, left)] = face
    return _png(image), corners


class FakeEncoder:
    def encode(self, photo, min_face_px):
        pixels = photo.pixels.astype(np.int64)
        keys = (pixels[..., 0] + 256 * pixels[..., 1] + 65536 * pixels[..., 2]).ravel()
        found, inverse = np.unique(keys, return_inverse=True)
        ys, xs = np.indices(photo.pixels.shape[:2])
        boxes = np.zeros((len(found), 4), dtype=np.int64)
        boxes[:, 0] = boxes[:, 3] = 1 << 40
        np.minimum.at(boxes[:, 0], inverse, ys.ravel())
        np.maximum.at(boxes[:, 1], inverse, xs.ravel() + 1)
        np.maximum.at(boxes[:, 2], inverse, ys.ravel() + 1)
        np.minimum.at(boxes[:, 3], inverse, xs.ravel())
        faces = []
        for key, (top, right, bottom, left) in zip(found.tolist(), boxes.tolist()):
            if key == 0:
                continue
            person, variant = person_variant((key % 256, key // 256 % 256, key // 65536))
            faces.append(DetectedFace(box=Box(top, right, bottom, left), encoding=encoding(person, variant)))
        return sorted(faces, key=lambda f: (f.box.top, f.box.left))
'''

#: The child: opens the gallery, says "ready", then enrolls, imports and forgets until killed.
#: A line goes to the marks file (fsync'd) only after a call has returned.
CHILD = '''
import os
import random
import sys

sys.path.insert(0, sys.argv[1])
from crashfake import VARIANTS, FakeEncoder, photo_bytes

from consentmatch import Consent, ConsentMatchError, Gallery

folder, gallery_path, marks_path, trial, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
rng = random.Random(seed)


def mark(line):
    with open(marks_path, "a") as marks:
        marks.write(line + "\\n")
        marks.flush()
        os.fsync(marks.fileno())


def purposes(person):
    return ["door", "payroll"] if person % 2 else ["door"]


people = iter(range(trial * 100 + 1, trial * 100 + 100))
with Gallery(gallery_path, encoder=FakeEncoder(), actor="crash-test") as gallery:
    live = {s.subject for s in gallery.subjects()}
    # Warm up before "ready": the first search loads the index (FAISS's import alone takes ~0.2 s),
    # which would otherwise fall in the first step, past most kill delays (nothing ever committed).
    try:
        gallery.match(photo_bytes(9_999, 0), purpose="door")  # nobody, as in _check_gallery
    except ConsentMatchError:
        pass
    mine = {}  # subjects enrolled by this child: name -> (person, variants held)
    print("ready", flush=True)
    while True:
        roll = rng.random()
        forget_share = 0.1 + 0.5 * min(1.0, len(live) / 20)
        extendable = sorted(n for n, (_, held) in mine.items() if len(held) < VARIANTS)
        if live and roll < forget_share:
            name = rng.choice(sorted(live))
            mark("forgetting " + name)  # from here on, its absence is no loss
            gallery.forget(name)
            mark("erased " + name)
            live.discard(name)
            mine.pop(name, None)
        elif extendable and roll < forget_share + 0.15:
            name = rng.choice(extendable)
            person, held = mine[name]
            variant = rng.choice(sorted(set(range(VARIANTS)) - held))
            gallery.enroll(name, photo_bytes(person, variant), "REF-" + name)
            held.add(variant)
            mark("enrolled " + name)
        elif roll < forget_share + 0.4:
            rows, wanted = [], {}
            for _ in range(rng.randint(1, 3)):
                person = next(people)
                variants = rng.sample(range(VARIANTS), rng.randint(1, 2))
                wanted["p%d" % person] = person
                for variant in variants:
                    photo = os.path.join(folder, "p%d_v%d.png" % (person, variant))
                    with open(photo, "wb") as out:
                        out.write(photo_bytes(person, variant))
                    rows.append("p%d,%s,REF-p%d,%s" % (person, photo, person, ";".join(purposes(person))))
            if rng.random() < 0.3:  # a bad row: skipped, the others go in
                person = next(people)
                rows.append("p%d,%s,REF-p%d,door" % (person, os.path.join(folder, "missing.png"), person))
            manifest = os.path.join(folder, "import-%d.csv" % trial)
            with open(manifest, "w") as out:
                out.write("subject,photo,consent_ref,purposes\\n" + "\\n".join(rows) + "\\n")
            report = gallery.import_manifest(manifest)
            for enrollment in report.enrolled:
                name = enrollment.subject
                mark("enrolled " + name)
                live.add(name)
                held = mine.setdefault(name, (wanted[name], set()))[1]
                held.add(int(enrollment.photos[0].rsplit("_v", 1)[1][:-4]))
        else:
            person = next(people)
            name = "p%d" % person
            variants = rng.sample(range(VARIANTS), rng.randint(1, 3))
            gallery.enroll(name, [photo_bytes(person, v) for v in variants], Consent("REF-" + name, purposes(person)))
            mark("enrolled " + name)
            live.add(name)
            mine[name] = (person, set(variants))
'''


def _load_fake(folder: Path) -> ModuleType:
    (folder / "crashfake.py").write_text(FAKE_MODULE)
    spec = importlib.util.spec_from_file_location("crashfake", folder / "crashfake.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _marks(path: Path) -> dict[str, set[str]]:
    """The names the child marked, by verb: enrolled, forgetting, erased."""
    marks: dict[str, set[str]] = {"enrolled": set(), "forgetting": set(), "erased": set()}
    if path.exists():
        for line in path.read_text().splitlines():
            verb, name = line.split(" ", 1)
            marks[verb].add(name)
    return marks


def _connect(location: str) -> Any:
    """A DB-API connection to the gallery's own tables: the SQLite file, or the PostgreSQL database."""
    if location.startswith("postgresql://"):
        import psycopg

        return psycopg.connect(location, autocommit=True)
    return sqlite3.connect(location)


def _mark_count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait_for_a_mark(path: Path, seen: int, timeout: float = 15.0) -> None:
    """Until the child has marked a step beyond the `seen` lines (or `timeout` seconds passed)."""
    deadline = time.monotonic() + timeout
    while _mark_count(path) <= seen and time.monotonic() < deadline:
        time.sleep(0.01)


def _check_store(location: str, where: str) -> dict[str, Any]:
    """Raw SQL checks; returns what the store holds: templates by subject and consented purposes.

    On PostgreSQL the server keeps its own pages and foreign keys sound (a killed client's
    transaction is rolled back by the server): the SQL checks below are the ones that matter.
    """
    conn = _connect(location)
    try:
        if isinstance(conn, sqlite3.Connection):
            conn.execute("PRAGMA foreign_keys = ON")
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], where
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == [], where
        orphans = {
            "templates without subject": "SELECT t.id FROM templates t LEFT JOIN subjects s ON s.id = t.subject_id WHERE s.id IS NULL",
            "templates without consent": "SELECT t.id FROM templates t LEFT JOIN consents c ON c.id = t.consent_id WHERE c.id IS NULL",
            "templates under another subject's consent": "SELECT t.id FROM templates t JOIN consents c ON c.id = t.consent_id WHERE c.subject_id != t.subject_id",
            "consents without subject": "SELECT c.id FROM consents c LEFT JOIN subjects s ON s.id = c.subject_id WHERE s.id IS NULL",
            "purposes without consent": "SELECT p.consent_id FROM consent_purposes p LEFT JOIN consents c ON c.id = p.consent_id WHERE c.id IS NULL",
            "subjects without consent": "SELECT s.id FROM subjects s WHERE NOT EXISTS (SELECT 1 FROM consents c WHERE c.subject_id = s.id)",
            # A subject may keep its (non-biometric) consent records without templates when a
            # forget was cut short after shredding: then it must hold no data key either.
            "subjects without template but with a key": "SELECT s.id FROM subjects s WHERE s.key_id IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM templates t WHERE t.subject_id = s.id)",
        }
        for what, query in orphans.items():
            assert conn.execute(query).fetchall() == [], f"{what} {where}"
        templates: dict[str, set[str]] = {}
        for name, sha in conn.execute("SELECT s.name, t.photo_sha256 FROM templates t JOIN subjects s ON s.id = t.subject_id"):
            templates.setdefault(name, set()).add(sha)
        purposes: dict[str, set[str]] = {}
        for name, purpose in conn.execute(
            """SELECT s.name, p.purpose FROM subjects s JOIN consents c ON c.subject_id = s.id
               JOIN consent_purposes p ON p.consent_id = c.id WHERE c.revoked_at IS NULL"""
        ):
            purposes.setdefault(name, set()).add(purpose)
        return {"templates": templates, "purposes": purposes}
    finally:
        conn.close()


def _check_gallery(gallery: Gallery, fake: ModuleType, store: dict[str, Any], erased: set[str], where: str) -> None:
    """Matching finds exactly what the store holds, for each purpose."""
    templates: dict[str, set[str]] = store["templates"]
    # A forget cut short after shredding leaves the consent records of a subject with no
    # templates (and no key: checked on the raw store); it lists with 0 templates.
    infos = {s.subject: s for s in gallery.subjects() if s.templates}
    assert set(infos) == set(templates), where
    assert not erased & set(infos), f"erased subjects came back: {sorted(erased & set(infos))} {where}"
    for name, info in infos.items():
        assert info.templates == len(templates[name]), f"{name}: subjects() says {info.templates} {where}"
        assert set(info.active_purposes) == store["purposes"][name], where

    people = {name: int(name[1:]) for name in infos}
    faces = [(person, v) for person in sorted(people.values()) for v in range(fake.VARIANTS)]
    faces += [(int(name[1:]), 0) for name in sorted(erased)]
    faces.append((9_999, 0))  # nobody: every candidate list names all searchable subjects
    probe, corners = fake.probe_bytes(faces)
    digests = {name: {_sha(fake.photo_bytes(people[name], v)): v for v in range(fake.VARIANTS)} for name in infos}
    held = {name: {digests[name][sha] for sha in shas} for name, shas in templates.items()}

    for purpose in (DOOR, PAYROLL):
        consented = {name for name in infos if purpose in store["purposes"][name]}
        result = gallery.match(probe, purpose=purpose, top_k=1000)
        assert len(result.faces) == len(faces), where
        found: dict[str, set[int]] = {}
        for face in result.faces:
            person, variant = corners[(face.box.top, face.box.left)]
            listed = {c.subject for c in face.candidates}
            assert listed == consented, f"{purpose}: match lists {sorted(listed ^ consented)} wrongly {where}"
            exact = [c.subject for c in face.candidates if c.distance < 1e-4]
            name = f"p{person}"
            if name in consented and variant in held[name]:
                assert exact == [name], f"template {name} v{variant} not found for {purpose} {where}"
                found.setdefault(name, set()).add(variant)
            else:
                assert exact == [], f"{name} v{variant} found but not stored, for {purpose} {where}"
        for name in consented:
            assert len(found.get(name, ())) == infos[name].templates, f"{name}: {purpose} finds {found.get(name)} {where}"


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("store", STORES)
def test_sigkill_during_enroll_import_forget_never_corrupts_or_resurrects(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """On SQLite a kill may land mid-write to the file; on PostgreSQL it drops the connection
    mid-transaction (the server rolls it back) and may fall between the gallery's database and
    its keys database: either way the gallery reopens consistent and erasures hold."""
    seed = int(os.environ.get("CONSENTMATCH_CRASH_SEED") or random.SystemRandom().randrange(1 << 31))
    rng = random.Random(seed)
    fake = _load_fake(tmp_path)
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(CHILD))
    on_postgres = store == "postgres"
    gallery_path: str = request.getfixturevalue("pg_url") if on_postgres else str(tmp_path / "crash.db")
    marks_path = tmp_path / "marks.txt"
    trials = PG_TRIALS if on_postgres else TRIALS
    kills_in_flight = 0
    with Gallery(gallery_path, encoder=fake.FakeEncoder(), actor="watcher") as watcher:
        watcher.set_policy("max_top_k", 1000)  # _check_gallery lists every subject
        for purpose in (DOOR, PAYROLL):  # searched before a kill may have let any consent declare them
            watcher.declare_purpose(purpose)
        for trial in range(trials):
            where = f"[trial {trial}; replay with CONSENTMATCH_CRASH_SEED={seed}]"
            seen = _mark_count(marks_path)
            process = subprocess.Popen(
                [sys.executable, str(child), str(tmp_path), str(gallery_path), str(marks_path), str(trial),
                 str(rng.randrange(1 << 31))],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # the environment is inherited: CONSENTMATCH_KEY and friends reach the child
            ready = process.stdout.readline() if process.stdout else ""
            if ready and on_postgres:  # its first step is slow (both databases, the first data key):
                _wait_for_a_mark(marks_path, seen)  # the random delay starts from its first commit
            time.sleep(rng.choice([0.0, 0.005, 0.02]) + rng.uniform(0.0, 0.25) if ready else 0)
            process.kill()
            _, stderr = process.communicate(timeout=30)
            assert ready == "ready\n" and process.returncode == -signal.SIGKILL, f"child failed {where}:\n{stderr}"
            kills_in_flight += 1

            marks = _marks(marks_path)
            erased = marks["erased"]
            if not on_postgres and not Path(gallery_path).exists():
                assert not marks["enrolled"], where
                continue
            # Opening finishes what a kill interrupted: an erasure whose data key was already
            # shredded loses its rows here (by design: erasure shreds first, then deletes).
            with Gallery(gallery_path, encoder=fake.FakeEncoder(), actor="recovery") as recovery:
                recovery.subjects()
            store = _check_store(gallery_path, where)
            missing = marks["enrolled"] - marks["forgetting"] - set(store["templates"])
            assert not missing, f"enrollments that had returned are lost: {sorted(missing)} {where}"
            with Gallery(gallery_path, encoder=fake.FakeEncoder(), actor="checker") as fresh:
                _check_gallery(fresh, fake, store, erased, where)
                audit = fresh.verify_audit()
                assert audit.intact, f"audit chain broken at {audit.broken_at}: {audit.problem} {where}"
            _check_gallery(watcher, fake, store, erased, where + " (gallery kept open)")
    marks = _marks(marks_path)
    assert kills_in_flight == trials and marks["erased"], f"the trials should have erased someone: {marks}"


#: Rotates the gallery key until killed.
ROTATOR = """
import sys
sys.path.insert(0, sys.argv[1])
from crashfake import FakeEncoder
from consentmatch import Gallery

with Gallery(sys.argv[2], encoder=FakeEncoder(), actor="rotator") as gallery:
    gallery.subjects()
    print("ready", flush=True)
    while True:
        gallery.rotate_key()
"""

ROTATION_TRIALS = 12


def test_sigkill_during_key_rotation_leaves_a_gallery_that_opens(tmp_path: Path) -> None:
    seed = int(os.environ.get("CONSENTMATCH_CRASH_SEED") or random.SystemRandom().randrange(1 << 31))
    rng = random.Random(seed)
    fake = _load_fake(tmp_path)
    child = tmp_path / "rotator.py"
    child.write_text(ROTATOR)
    failures = []
    for trial in range(ROTATION_TRIALS):
        path = tmp_path / f"rotate-{trial}.db"
        with Gallery(path, encoder=fake.FakeEncoder()) as gallery:
            gallery.enroll("p7", [fake.photo_bytes(7, v) for v in range(2)], Consent("REF-p7", [DOOR]))
            key_file = Path(gallery.key_info().key_source.removeprefix("key file "))
        first_key = key_file.read_text()
        process = subprocess.Popen([sys.executable, str(child), str(tmp_path), str(path)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready = process.stdout.readline() if process.stdout else ""
        time.sleep(rng.uniform(0.02, 0.3))
        process.kill()
        _, stderr = process.communicate(timeout=30)
        assert ready == "ready\n" and process.returncode == -signal.SIGKILL, stderr
        try:
            with Gallery(path, encoder=fake.FakeEncoder()) as gallery:
                (face,) = gallery.match(fake.photo_bytes(7, 0), purpose=DOOR).faces
                assert face.subject == "p7" and [s.templates for s in gallery.subjects()] == [2]
                # a rotation that took effect is in the audit trail; no half-done one leaves a `.next`
                rotated = [e for e in gallery.audit() if e.action == "key-rotate"]
                assert bool(rotated) or key_file.read_text() == first_key, "a rotation left no audit event"
                assert gallery.verify_audit().intact
            assert not key_file.with_name(key_file.name + ".next").exists(), "a stale .next key file"
        except (ConsentMatchError, AssertionError) as exc:
            failures.append(f"trial {trial}: {type(exc).__name__}: {exc}")
    assert not failures, f"[replay with CONSENTMATCH_CRASH_SEED={seed}]\n" + "\n".join(failures)


#: Forgets the subjects named on the command line, one by one, until killed.
ERASER = """
import sys
sys.path.insert(0, sys.argv[1])
from crashfake import FakeEncoder
from consentmatch import Gallery

with Gallery(sys.argv[2], encoder=FakeEncoder(), actor="eraser") as gallery:
    gallery.subjects()
    print("ready", flush=True)
    for name in sys.argv[3:]:
        gallery.forget(name)
"""

SHRED_TRIALS = 8


def test_sigkill_during_forget_still_shreds_the_subject_in_old_backups(tmp_path: Path) -> None:
    seed = int(os.environ.get("CONSENTMATCH_CRASH_SEED") or random.SystemRandom().randrange(1 << 31))
    rng = random.Random(seed)
    fake = _load_fake(tmp_path)
    child = tmp_path / "eraser.py"
    child.write_text(ERASER)
    people = range(11, 41)  # ~0.5 s of forgets
    failures = []
    for trial in range(SHRED_TRIALS):
        path, backup = tmp_path / f"shred-{trial}.db", tmp_path / f"backup-{trial}.db"
        with Gallery(path, encoder=fake.FakeEncoder()) as gallery:
            for person in people:
                gallery.enroll(f"p{person}", [fake.photo_bytes(person, 0)], Consent(f"REF-p{person}", [DOOR]))
        assert not Path(f"{path}-wal").exists()  # the clean close checkpointed everything into the file
        shutil.copyfile(path, backup)  # last night's backup
        process = subprocess.Popen([sys.executable, str(child), str(tmp_path), str(path), *[f"p{p}" for p in people]],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready = process.stdout.readline() if process.stdout else ""
        time.sleep(rng.uniform(0.0, 0.5))
        process.kill()
        _, stderr = process.communicate(timeout=30)
        assert ready == "ready\n", stderr
        with Gallery(path, encoder=fake.FakeEncoder()) as gallery:
            erased = {f"p{p}" for p in people} - {s.subject for s in gallery.subjects()}
        with Gallery(backup, encoder=fake.FakeEncoder()) as restored:
            probe, _ = fake.probe_bytes([(p, 0) for p in people])
            found = {face.subject for face in restored.match(probe, purpose=DOOR).faces} & erased
        if found:
            failures.append(f"trial {trial}: the restored backup still matches erased {sorted(found)}")
    assert not failures, f"[replay with CONSENTMATCH_CRASH_SEED={seed}]\n" + "\n".join(failures)
