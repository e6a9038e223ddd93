"""Fixtures: a fake encoder for fast tests, and a real gallery built once from examples/."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from consentmatch import Consent, Gallery
from consentmatch.vision.types import DetectedFace, Encoder
from consentmatch.images import Photo
from consentmatch.results import Box

from .pg import Cluster, find_bin

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DATA = Path(__file__).resolve().parent / "data"
PURPOSE = "visitor-check-in"


class FakeEncoder:
    """Each solid non-black square is a face: red picks the person, green varies the photo.

    Same red: distance about 0.2 (a match at 0.6); different red: about 1.4.
    """

    calls = 0

    def encode(self, photo: Photo, min_face_px: int) -> list[DetectedFace]:
        FakeEncoder.calls += 1
        pixels = photo.pixels.reshape(-1, 3)
        colours = [tuple(c) for c in np.unique(pixels, axis=0) if c.any()]
        faces = []
        for colour in colours:
            ys, xs = np.nonzero(np.all(photo.pixels == colour, axis=-1))
            box = Box(int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, int(xs.min()))
            faces.append(DetectedFace(box=box, encoding=fake_encoding(int(colour[0]), int(colour[1]))))
        return sorted(faces, key=lambda f: (f.box.top, f.box.left))


def fake_encoding(person: int, variant: int = 0) -> np.ndarray:
    base = np.random.default_rng(person).normal(size=128)
    noise = np.random.default_rng(10_000 + variant).normal(size=128)
    vector = base / np.linalg.norm(base) + 0.15 * noise / np.linalg.norm(noise) * (variant > 0)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def fake_photo(folder: Path, name: str, *faces: tuple[int, int], size: int = 100) -> Path:
    """A PNG with one `size`-px square per (person, variant), side by side."""
    image = np.zeros((size + 20, (size + 10) * max(1, len(faces)) + 10, 3), dtype=np.uint8)
    for i, (person, variant) in enumerate(faces):
        left = 10 + i * (size + 10)
        image[10 : 10 + size, left : left + size] = (person, variant, 7)
    path = folder / name
    Image.fromarray(image).save(path)
    return path


def gallery_rows(path: Path) -> dict[str, list[Any]]:
    """Every row of a gallery file but its audit trail's: what a refused call must leave as it was
    (refusals are recorded in the audit trail)."""
    conn = sqlite3.connect(path)
    try:
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN ('audit', 'meta')")]
        rows = {n: conn.execute(f"SELECT * FROM {n} ORDER BY 1").fetchall() for n in names}
        rows["meta"] = conn.execute("SELECT * FROM meta WHERE key != 'audit_head' ORDER BY 1").fetchall()
        return rows
    finally:
        conn.close()


@pytest.fixture(scope="session", autouse=True)
def _key_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Gallery keys for the whole session in a temporary folder (subprocesses inherit it)."""
    import os

    saved = {name: os.environ.pop(name, None) for name in ("CONSENTMATCH_KEY", "CONSENTMATCH_KEY_FILE")}
    folder = tmp_path_factory.mktemp("keys")
    os.environ["CONSENTMATCH_KEY_DIR"] = str(folder)
    os.environ["CONSENTMATCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))  # the converted ONNX model
    # The fake encoder's flat squares fail every quality bar: galleries default to no bar here;
    # tests of the bar set it explicitly (tests/test_quality.py, test_gates.py).
    os.environ["CONSENTMATCH_QUALITY"] = "off"
    yield folder
    for name, value in saved.items():
        if value is not None:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSENTMATCH_GALLERY", raising=False)


@pytest.fixture
def fake_gallery(tmp_path: Path) -> Iterator[Gallery]:
    with Gallery(tmp_path / "fake.db", encoder=FakeEncoder()) as gallery:
        yield gallery


#: The stores the contract tests run against (`store_gallery`, `gallery_location`).
STORES = ("sqlite", "postgres")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL cluster for the session (tests/pg.py); skipped where none can start."""
    import os

    # In CI (.ci/run installs PostgreSQL) a missing server is a failure, never a quiet skip.
    give_up = pytest.fail if os.environ.get("CI") else pytest.skip
    bindir = find_bin()
    if bindir is None:
        give_up("PostgreSQL is not installed (initdb not found): `apt-get install postgresql` (.ci/run does)")
    assert bindir is not None
    cluster = Cluster(bindir)
    try:
        cluster.start()
    except (OSError, KeyError, subprocess.SubprocessError) as exc:
        cluster.close()
        give_up(f"a PostgreSQL cluster could not be started here: {exc}")
    yield cluster
    cluster.close()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """The URL of a new empty database of the session's cluster."""
    return pg_cluster.new_database()


@pytest.fixture(params=STORES)
def gallery_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a new gallery goes, once per store: an SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "fake.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store_gallery(gallery_location: str) -> Iterator[Gallery]:
    """`fake_gallery` on each store in turn: the contract tests that take it run against both."""
    with Gallery(gallery_location, encoder=FakeEncoder()) as gallery:
        yield gallery


@pytest.fixture
def consent() -> Consent:
    return Consent("REF-1", [PURPOSE])


@pytest.fixture(scope="session")
def _real_gallery_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples' people enrolled once per session with the real models."""
    path = tmp_path_factory.mktemp("real") / "people.db"
    with Gallery(path) as gallery:
        report = gallery.import_manifest(EXAMPLES / "consents.csv")
    assert not report.rejected, report.rejected
    return path


@pytest.fixture
def real_gallery_path(_real_gallery_file: Path, tmp_path: Path) -> Path:
    """A private copy of the real gallery, free to change."""
    path = tmp_path / "people.db"
    shutil.copyfile(_real_gallery_file, path)
    return path


@pytest.fixture
def real_gallery(real_gallery_path: Path) -> Iterator[Gallery]:
    with Gallery(real_gallery_path) as gallery:
        yield gallery


# -- markers: unit, contract, e2e (pyproject.toml registers them; README's Development section) ----

#: Files whose every test is end to end: a real server, a real browser, or child processes.
E2E_FILES = frozenset({
    "test_benchmarks.py", "test_concurrency.py", "test_console.py", "test_crash.py", "test_examples.py",
    "test_install.py", "test_readme.py", "test_service_server.py",
})
#: Fixtures that put a test on a store (both engines, or a real PostgreSQL): a contract test.
STORE_FIXTURES = frozenset({"gallery_location", "store_gallery", "pg_url", "pg_cluster"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test exactly one of `unit`, `contract`, `e2e`, so `pytest -m unit` is the fast loop.

    `e2e`: marked `slow`, or in an E2E_FILES file (and then marked `slow` too: the two name the same
    tests). `contract`: takes a store fixture (directly or through another fixture), or a fixture
    parametrised over STORES (one that asks for `pg_url` by `getfixturevalue`). `unit`: the rest.
    """
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        on_stores = callspec is not None and any(isinstance(v, str) and v in STORES for v in callspec.params.values())
        if item.get_closest_marker("slow") or item.path.name in E2E_FILES:
            item.add_marker(pytest.mark.e2e)
            if not item.get_closest_marker("slow"):
                item.add_marker(pytest.mark.slow)
        elif fixtures & STORE_FIXTURES or on_stores:
            item.add_marker(pytest.mark.contract)
        else:
            item.add_marker(pytest.mark.unit)


# -- the real encoder, once per session (tests/test_evaluate*.py) -------------------------------


class CachedEncoder:
    """The real encoder, remembering each photo's faces: every photo is encoded once per session."""

    def __init__(self, real: Encoder) -> None:
        self.real = real
        self.seen: dict[tuple[str, int], list[DetectedFace]] = {}

    def encode(self, photo: Photo, min_face_px: int) -> list[DetectedFace]:
        key = (photo.sha256, min_face_px)
        if key not in self.seen:
            self.seen[key] = self.real.encode(photo, min_face_px)
        return self.seen[key]


@pytest.fixture(scope="session")
def cached_encoder() -> CachedEncoder:
    from consentmatch.vision import default_encoder

    return CachedEncoder(default_encoder())


@pytest.fixture
def cli_encoder(cached_encoder: CachedEncoder, monkeypatch: pytest.MonkeyPatch) -> Iterator[CachedEncoder]:
    monkeypatch.setattr("consentmatch.vision.default_encoder", lambda settings=None: cached_encoder)
    yield cached_encoder
