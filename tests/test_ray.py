"""`import --ray` / `import_manifest(runner=RayRunner())`: the photo work on a real local Ray.

One Ray session for the module (`ray.init(num_cpus=2)`: two one-CPU actors), the real models on
the example photos. The driver (this process, or a CLI child connected to the same Ray) admits
and stores every row; the tests check that the result is the local import's, that a worker
killed mid-run is restarted by Ray and its rows retried, and that a driver killed mid-run and
run again stores every row once.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consentmatch import ConsentMatchError, EngineError, Gallery, ImportReport, InvalidArgumentError, RayRunner
from consentmatch.cli import app
from consentmatch.runners import RAY_INSTALL_HINT

from .conftest import EXAMPLES, PURPOSE, FakeEncoder, fake_photo

#: The stores every test here runs against: the driver opens the gallery, the workers never do.
STORES = ["sqlite", "postgres"]

WORKER_TITLE = b"ray::_PhotoWorker"
#: Probes whose matches compare two galleries' encodings: one face, two, and a small one.
PROBES = [EXAMPLES / "probes" / name for name in ("obama1.jpg", "obama_and_biden.jpg", "kit_with_rose.jpg")]


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A real local Ray for the module's tests; its address, for CLI children to connect to.

    Under `uv run`, Ray would package this folder for the workers and run them through uv
    (RAY_ENABLE_UV_RUN_RUNTIME_ENV, read when ray is imported): off, the workers use this venv.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


GalleryAt = Callable[[], str]


@pytest.fixture(params=STORES)
def gallery_at(request: pytest.FixtureRequest, tmp_path: Path) -> GalleryAt:
    """Where a fresh gallery is made, for each store: a function, so one test can make several."""
    if request.param == "postgres":
        cluster = request.getfixturevalue("pg_cluster")
        return lambda: str(cluster.new_database())
    count = iter(range(1000))
    return lambda: str(tmp_path / f"gallery-{next(count)}.db")


def _manifest(folder: Path, copies: int, extra: Sequence[list[str]] = ()) -> Path:
    """The examples' manifest, each row `copies` times under new names and references (so each
    row is real photo work: run with allow_duplicate), plus `extra` rows."""
    with open(EXAMPLES / "consents.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    header, body = rows[0], rows[1:]
    path = folder / f"manifest-{copies}.csv"
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for copy in range(copies):
            for row in body:
                subject, photo, reference = row[0], str(EXAMPLES / row[1]), row[2]
                evidence = str(EXAMPLES / row[6]) if row[6] else ""
                suffix = f"-{copy}" if copy else ""
                writer.writerow([subject + suffix, photo, reference + suffix, *row[3:6], evidence, *row[7:]])
        for row in extra:
            writer.writerow(row + [""] * (len(header) - len(row)))
    return path


def _outcome(path: str, report: ImportReport) -> tuple[object, ...]:
    """What an import leaves: its report, the subjects with their template counts, and every
    probe's match (names and distances: the stored encodings, up to float noise)."""
    with Gallery(path) as gallery:
        subjects = sorted((s.subject, s.templates) for s in gallery.subjects())
        matches = []
        for probe in PROBES:
            for face in gallery.match(probe, purpose=PURPOSE).faces:
                matches.append((probe.name, face.subject, round(face.distance, 4) if face.subject else None))
        refusals = [(e.action, e.subject, e.details["error"], e.details["reason"])
                    for e in gallery.audit() if e.details.get("outcome") == "refused"]
    return report.to_dict(), subjects, matches, refusals


def _workers() -> set[int]:
    """The pids of this machine's photo worker actors (by the process title Ray gives them)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(WORKER_TITLE):
                    found.add(int(entry.name))
            except OSError:
                pass
    return found


def _templates(path: str) -> int:
    """Templates stored so far, read through the API (any store) while a child process may be
    writing; a gallery the child is still creating counts as none."""
    try:
        with Gallery(path) as gallery:
            return sum(s.templates for s in gallery.subjects())
    except ConsentMatchError:
        return 0


def test_ray_import_gives_the_local_imports_result(ray_address: str, gallery_at: GalleryAt, tmp_path: Path) -> None:
    bad = [
        ["nobody", str(tmp_path / "missing.jpg"), "REL-X-1", PURPOSE],  # ImageError at the worker
        ["two", str(EXAMPLES / "probes" / "obama_and_biden.jpg"), "REL-X-2", PURPOSE],  # two faces
        ["obama-again", str(EXAMPLES / "people" / "obama" / "obama.jpg"), "REL-X-3", PURPOSE],  # duplicate rule
        ["", "x.jpg", "REL-X-4", PURPOSE],  # a row problem: never reaches a worker
    ]
    manifest = _manifest(tmp_path, 1, bad)
    local, remote = gallery_at(), gallery_at()
    with Gallery(local) as gallery:
        expected = _outcome(local, gallery.import_manifest(manifest))
    with Gallery(remote) as gallery:
        got = _outcome(remote, gallery.import_manifest(manifest, runner=RayRunner(batch_size=2)))
    assert got == expected
    report, subjects, matches, refusals = expected
    assert isinstance(report, dict) and report["enrolled"] == 9 and len(report["rejected"]) == 4
    assert [error for _, _, error, _ in refusals] == ["ImageError", "MultipleFacesError", "PolicyError"]
    assert any(probe == "obama1.jpg" and subject == "obama" for probe, subject, _ in matches)  # type: ignore[misc]


def test_a_custom_encoder_travels_to_the_workers(ray_address: str, gallery_at: GalleryAt, tmp_path: Path) -> None:
    """`Gallery(encoder=...)` of the caller's own is sent to the workers as it is (here the fake
    encoder, imported there by name): a Ray import gives the local import's result with it too,
    an empty manifest included."""
    rows = [[f"p{n}", str(fake_photo(tmp_path, f"p{n}.png", (n + 1, 0))), f"F-{n}", PURPOSE] for n in range(6)]
    rows.append(["twin", str(fake_photo(tmp_path, "twin.png", (1, 1))), "F-twin", PURPOSE])  # p0's face: refused
    rows.append(["two", str(fake_photo(tmp_path, "two.png", (20, 0), (21, 0))), "F-two", PURPOSE])  # two faces
    manifest = _manifest(tmp_path, 0, rows)
    (tmp_path / "empty").mkdir()
    empty = _manifest(tmp_path / "empty", 0)
    outcomes, calls_here = [], []
    for runner in (None, RayRunner(batch_size=3)):
        path = gallery_at()
        with Gallery(path, encoder=FakeEncoder()) as gallery:
            before = FakeEncoder.calls
            report = gallery.import_manifest(manifest, runner=runner)
            calls_here.append(FakeEncoder.calls - before)
            nothing = gallery.import_manifest(empty, runner=runner)
            subjects = sorted((s.subject, s.templates) for s in gallery.subjects())
        outcomes.append((report.to_dict(), nothing.to_dict(), subjects))
    assert outcomes[0] == outcomes[1]
    assert calls_here == [8, 0]  # on Ray, no photo was encoded in this process
    report_dict = outcomes[0][0]
    assert report_dict["enrolled"] == 6 and [r["subject"] for r in report_dict["rejected"]] == ["twin", "two"]
    assert outcomes[0][1]["rows"] == 0


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_retried_and_the_import_completes(
    ray_address: str, gallery_at: GalleryAt, tmp_path: Path
) -> None:
    manifest = _manifest(tmp_path, 2)
    killed: set[int] = set()
    restarted: set[int] = set()

    def progress(done: int, total: int) -> None:
        if done == 1:  # rows 2.. are out on the workers: kill every worker process
            killed.update(_workers())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
        elif done == total - 1:
            restarted.update(_workers() - killed)

    path = gallery_at()
    with Gallery(path) as gallery:
        report = gallery.import_manifest(manifest, runner=RayRunner(batch_size=2), allow_duplicate=True,
                                         progress=progress)
    assert killed, "no worker process was found to kill"
    assert restarted, "Ray started no new worker after the kill"
    assert not report.rejected, report.rejected
    assert len(report.enrolled) == 18 and report.already_enrolled == 0
    with Gallery(path) as gallery:
        assert sum(s.templates for s in gallery.subjects()) == 18


@pytest.mark.slow
def test_a_driver_killed_mid_run_and_run_again_stores_every_row_once(
    ray_address: str, gallery_at: GalleryAt, tmp_path: Path
) -> None:
    manifest = _manifest(tmp_path, 2)
    path = gallery_at()
    command = [sys.executable, "-m", "consentmatch", "import", str(manifest), "-g", path, "--allow-duplicate",
               "--json", "--ray", ray_address]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    stored = 0
    while child.poll() is None and time.monotonic() < deadline:
        stored = _templates(path)
        if stored >= 2:
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    child.communicate()
    assert child.returncode == -signal.SIGKILL, "the import ended before it could be killed"
    before = _templates(path)
    assert 2 <= before < 18

    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["enrolled"] == 18 and report["rejected"] == []
    assert report["already_enrolled"] == before  # the rows stored before the kill, and only they
    with Gallery(path) as gallery:
        subjects = gallery.subjects()
    assert len(subjects) == 10 and sum(s.templates for s in subjects) == 18


def test_ray_missing_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(EngineError, match=r"pip install 'consentmatch\[ray\]'"):
        RayRunner()
    gallery = tmp_path / "g.db"
    result = CliRunner().invoke(app, ["import", str(EXAMPLES / "consents.csv"), "-g", str(gallery), "--ray", "local"])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {RAY_INSTALL_HINT}"
    assert not gallery.exists()


def test_ray_runner_refuses_settings_that_start_no_work() -> None:
    with pytest.raises(InvalidArgumentError, match="concurrency=0"):
        RayRunner(concurrency=0)
    with pytest.raises(InvalidArgumentError, match="batch_size=0"):
        RayRunner(batch_size=0)
