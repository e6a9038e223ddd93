"""The benchmarks run, at a small size, as smoke tests: timed tests are not benchmarks (benchmarks/README.md)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import EXAMPLES, ROOT


def _run(script: str, *args: str, timeout: int = 240) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json"],
        capture_output=True, text=True, timeout=timeout, check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_search_benchmark() -> None:
    result = _run("search.py", "--size", "2000", "--queries", "20")
    for key in ("size", "index", "p50_ms", "p99_ms", "recall_at_1", "open_s", "bytes_per_template", "face_distance_p50_ms"):
        assert key in result
    assert result["size"] == 2000 and result["recall_at_1"] == 1.0 and result["filtered_outside"] == 0
    assert result["snapshot_bytes"] > 2000 * 128 * 4 and result["memory_per_template"] > 0  # opened from its snapshot


def test_photos_benchmark_compares_decisions_with_the_peer(tmp_path: Path) -> None:
    known, unknown = tmp_path / "known", tmp_path / "unknown"
    for person in ("biden", "obama"):
        shutil.copytree(EXAMPLES / "people" / person, known / person)
    unknown.mkdir()
    for probe in ("obama_small.jpg", "obama-240p.jpg"):
        shutil.copyfile(EXAMPLES / "probes" / probe, unknown / probe)
    result = _run("photos.py", "--known", str(known), "--unknown", str(unknown),
                  "--expected", str(EXAMPLES / "expected.csv"), "--runs", "1")
    assert result["unknown_photos"] == 2 and result["runs"] == 1
    assert result["same_decisions"] is True and result["consentmatch_as_expected"] == result["expected_rows"] == 2
    assert result["ratio_match"] > 0
    assert result["fixed_s"] > 0 and result["photo_cpu_s"] > 0  # where the time goes: start-up vs photo work
    assert result["ratio_match_ceiling"] > 0


def test_encoder_benchmark() -> None:
    result = _run("encoder.py", "--rounds", "1")
    assert result["max_abs_diff"] < 1e-4 and result["faces"] > 0


def test_detector_benchmark() -> None:
    result = _run("detector.py", "--scales", "1,0.5", "--limit", "2", "--rounds", "1")
    assert result["photos"] == 4 and result["threads"] == 1
    assert result["hog_faces_x1"] == result["yunet_faces_x1"] == 2  # one face in each of the first two photos
    assert result["ratio"] > 0 and result["hog_ms_per_photo_x0.5"] > 0 and result["yunet_ms_per_photo_x0.5"] > 0


def test_search_benchmark_on_postgresql(pg_url: str) -> None:
    result = _run("search.py", "--size", "2000", "--queries", "20", "--gallery", pg_url)
    assert result["store"] == "postgresql" and result["size"] == 2000 and result["recall_at_1"] == 1.0
    assert result["filtered_outside"] == 0 and result["snapshot_bytes"] > 2000 * 128 * 2 and result["copy_s"] > 0


def test_nodes_benchmark(pg_cluster: Any) -> None:
    result = _run("nodes.py", "--gallery", pg_cluster.url("postgres"), "--subjects", "8", "--rounds", "2", timeout=300)
    assert result["postgresql_1_writer_per_s"] > 0 and result["postgresql_2_writer_per_s"] > 0
    assert result["sqlite_2_vs_1"] > 0 and result["erasure_rounds"] == 2 and result["erasure_ms_max"] < 5000


def test_enroll_benchmark_commit_rate(pg_cluster: Any) -> None:
    result = _run("enroll.py", "--commit-only", "--commit-rows", "70", "--postgres", pg_cluster.url("postgres"))
    assert result["commit_rows"] == 70 and result["commit_batch"] == 64
    for store in ("sqlite", "postgresql"):
        assert result[f"commit_{store}_batched_rows_per_s"] > 0 and result[f"commit_{store}_row_by_row_rows_per_s"] > 0
    assert result["commit_rows_per_s"] == result["commit_postgresql_batched_rows_per_s"]


def test_photo_sets_makes_the_varied_set_with_its_expected_rows(tmp_path: Path) -> None:
    import csv

    from PIL import Image

    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "photo_sets.py"), "varied", str(tmp_path / "varied")],
                   capture_output=True, text=True, timeout=240, check=True)
    photos = sorted((tmp_path / "varied").iterdir())
    with open(tmp_path / "varied_expected.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(photos) == len(rows) == 60 and {row["file"] for row in rows} == {p.name for p in photos}
    sides = [max(Image.open(p).size) for p in photos]
    assert min(sides) == 300 and max(sides) == 4600


def test_gates_benchmark_on_the_projects_photos() -> None:
    result = _run("gates.py", timeout=600)
    assert result["people/yunet"]["enrolled"] == result["people/hog"]["enrolled"]
    assert result["probes/yunet"]["as_expected"] == result["probes/yunet"]["as_expected_hog_gallery"] == 9
