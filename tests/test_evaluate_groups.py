"""evaluate/calibrate --groups (issue 26): the per-group figures against a hand count, then real photos and the CLI."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from consentmatch import InvalidArgumentError, ManifestError
from consentmatch.cli import app
from consentmatch.evaluate import (
    Comparisons,
    Groups,
    calibrate,
    calibrate_groups,
    clopper_pearson,
    compare_identities,
    compare_pairs,
    evaluate_groups,
    identify,
    plot_groups,
    read_groups,
)

from .conftest import DATA, EXAMPLES, ROOT, CachedEncoder

PAIRS = DATA / "pairs.csv"
GROUPS = DATA / "groups.csv"
runner = CliRunner()


# -- Clopper-Pearson --------------------------------------------------------------------------


def _binomial_at_most(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k + 1))


def test_clopper_pearson_against_closed_forms_and_tables() -> None:
    # no error in n: upper = 1 - 0.025^(1/n); all errors: lower = 0.025^(1/n); one error: lower = 1 - 0.975^(1/n)
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-12))
    assert clopper_pearson(10, 10) == (pytest.approx(0.025 ** (1 / 10), abs=1e-12), 1.0)
    low, high = clopper_pearson(1, 10)
    assert low == pytest.approx(1 - 0.975 ** (1 / 10), abs=1e-12)
    assert (round(low, 6), round(high, 6)) == (0.002529, 0.445016)  # the textbook 1/10 interval
    assert _binomial_at_most(1, 10, high) == pytest.approx(0.025, abs=1e-12)  # its definition
    assert clopper_pearson(0, 1) == (0.0, pytest.approx(0.975))
    with pytest.raises(InvalidArgumentError, match="0 <= errors <= trials"):
        clopper_pearson(3, 2)


def test_clopper_pearson_equals_the_beta_quantiles() -> None:
    beta = pytest.importorskip("scipy.stats").beta  # in the dev environment only: the product does not need it
    for errors, trials in [(1, 4), (5, 20), (3, 100_000), (50_000, 100_000), (999, 1000)]:
        low, high = clopper_pearson(errors, trials)
        assert low == pytest.approx(beta.ppf(0.025, errors, trials - errors + 1), rel=1e-9, abs=1e-15)
        assert high == pytest.approx(beta.ppf(0.975, errors + 1, trials - errors), rel=1e-9, abs=1e-15)


# -- the figures against a hand count ------------------------------------------------------------

#: Nine photos: p0-p3 in group a (two people), p4-p8 in group b (two people, and p8 failed to enrol).
HAND_PAIRS = [
    # (x, y, same, distance)
    (0, 1, True, 0.40), (2, 3, True, 0.70),                                           # a genuine: 1 of 2 beyond 0.6
    (0, 2, False, 0.50), (0, 3, False, 0.90), (1, 2, False, 0.70), (1, 3, False, 0.95),  # a impostor: 1 of 4 within
    (4, 5, True, 0.30), (6, 7, True, 0.35),                                           # b genuine: 0 of 2
    (4, 6, False, 0.90), (4, 7, False, 0.85), (5, 6, False, 0.80), (5, 7, False, 0.75),  # b impostor: 0 of 4
    (0, 4, False, 0.55), (1, 5, False, 0.65), (2, 6, False, 1.00),                    # a x b impostor: 1 of 3
]


def _hand() -> tuple[Comparisons, Groups]:
    photos = tuple(f"/photos/p{k}.jpg" for k in range(9))
    encodings = np.zeros((9, 128))
    encodings[8] = np.nan
    x, y, same, distance = zip(*HAND_PAIRS)
    comparisons = Comparisons(
        photos=photos, subjects=tuple("s" for _ in photos), encodings=encodings,
        first=np.array(x), second=np.array(y), same=np.array(same), distance=np.array(distance),
    )
    groups = Groups("photo", ("cohort",), {photo: ("a" if k < 4 else "b",) for k, photo in enumerate(photos)}, "hand.csv")
    return comparisons, groups


def test_per_group_rates_and_intervals_equal_a_hand_computation() -> None:
    comparisons, groups = _hand()
    report = evaluate_groups(comparisons, groups, 0.6)
    (cohort,) = report.attributes
    a, b = cohort.groups
    assert (a.group, b.group, a.photos, b.photos) == ("a", "b", 4, 5)
    # counts
    assert (a.fnmr.errors, a.fnmr.trials, a.fmr.errors, a.fmr.trials, a.fte.errors, a.fte.trials) == (1, 2, 1, 4, 0, 4)
    assert (b.fnmr.errors, b.fnmr.trials, b.fmr.errors, b.fmr.trials, b.fte.errors, b.fte.trials) == (0, 2, 0, 4, 1, 5)
    # rates and 95% Clopper-Pearson bounds, by the closed forms: 1 error in n: lower 1 - 0.975^(1/n);
    # 0 in n: upper 1 - 0.025^(1/n); n-1 in n: upper 0.975^(1/n)... (1 in 2: upper = 1 - lower by symmetry)
    assert a.fnmr.rate == 0.5 and a.fnmr.low == pytest.approx(1 - 0.975**0.5) and a.fnmr.high == pytest.approx(0.975**0.5)
    assert (round(a.fnmr.low or 0, 6), round(a.fnmr.high or 0, 6)) == (0.012579, 0.987421)
    assert a.fmr.rate == 0.25 and a.fmr.low == pytest.approx(1 - 0.975**0.25)
    assert round(a.fmr.high or 0, 5) == 0.80588 and _binomial_at_most(1, 4, a.fmr.high or 0) == pytest.approx(0.025)
    assert b.fnmr.rate == 0.0 and (b.fnmr.low, b.fnmr.high) == (0.0, pytest.approx(1 - 0.025**0.5))  # 0.841886
    assert b.fmr.rate == 0.0 and b.fmr.high == pytest.approx(1 - 0.025**0.25)  # 0.602365
    assert b.fte.rate == 0.2 and b.fte.low == pytest.approx(1 - 0.975**0.2) and round(b.fte.high or 0, 4) == 0.7164
    # quantiles (linear interpolation): a's impostors 0.5, 0.7, 0.9, 0.95
    assert dict(a.impostor.quantiles) == pytest.approx(
        {"min": 0.5, "q05": 0.53, "q25": 0.65, "median": 0.8, "q75": 0.9125, "q95": 0.9425, "max": 0.95}
    )
    assert dict(a.genuine.quantiles)["median"] == pytest.approx(0.55) and b.genuine.count == 2
    # the matrix: a x a and b x b repeat the groups; a x b is 1 false match in 3
    matrix = {(p.first, p.second): p for p in cohort.group_pairs}
    assert set(matrix) == {("a", "a"), ("a", "b"), ("b", "b")}
    assert matrix[("a", "a")].fmr == a.fmr and matrix[("b", "b")].fnmr == b.fnmr
    across = matrix[("a", "b")]
    assert (across.fmr.errors, across.fmr.trials, across.fnmr.trials) == (1, 3, 0)
    assert across.fmr.low == pytest.approx(1 - 0.975 ** (1 / 3)) and round(across.fmr.high or 0, 4) == 0.9057
    # the differential: 0.25 vs 0 (no ratio with a zero), and the intervals overlap
    assert cohort.fmr_differential is not None and cohort.fnmr_differential is not None
    assert (cohort.fmr_differential.highest, cohort.fmr_differential.lowest) == ("a", "b")
    assert cohort.fmr_differential.ratio is None and not cohort.fmr_differential.conclusive
    assert cohort.fnmr_differential.highest_rate == 0.5 and cohort.fnmr_differential.lowest_rate == 0.0
    # both groups are too small, and said so plainly
    small = [w for w in report.warnings if "too few to conclude anything" in w]
    assert len(small) == 2 and "cohort = 'a': only 2 same-person and 4 different-person pair(s)" in small[0]
    assert any("the FMR intervals of 'a' (0.2500) and 'b' (0.0000) overlap" in w for w in report.warnings)
    body = report.to_dict()["attributes"][0]
    assert body["groups"][0]["fmr"] == {"rate": 0.25, "ci_low": 0.006309, "ci_high": 0.805880, "errors": 1, "trials": 4}
    assert body["fmr_differential"]["conclusive"] is False and body["groups"][1]["failure_to_enrol"]["errors"] == 1


def test_a_differential_is_conclusive_only_when_the_intervals_part() -> None:
    photos = tuple(f"/p{k}.jpg" for k in range(4))
    # 400 impostor pairs per group: 40 false matches in a, none in b
    first = np.array([0] * 400 + [2] * 400)
    second = np.array([1] * 400 + [3] * 400)
    distance = np.array([0.5] * 40 + [0.9] * 360 + [0.9] * 400)
    comparisons = Comparisons(photos, ("s",) * 4, np.zeros((4, 128)), first, second, np.zeros(800, dtype=bool), distance)
    groups = Groups("photo", ("g",), {"/p0.jpg": ("a",), "/p1.jpg": ("a",), "/p2.jpg": ("b",), "/p3.jpg": ("b",)})
    gap = evaluate_groups(comparisons, groups, 0.6).attributes[0].fmr_differential
    assert gap is not None and gap.conclusive and (gap.highest, gap.highest_rate, gap.lowest_rate) == ("a", 0.1, 0.0)


def test_calibrate_groups_takes_the_worst_group_by_hand() -> None:
    comparisons, groups = _hand()
    # target 0.1: a's 4 impostors may hold no false match: just under 0.50 -> 0.499; b's: under 0.75 -> 0.749;
    # all 11 impostors may hold one: just under the second nearest, 0.55 -> 0.549
    overall = calibrate(comparisons.scores(), 0.1)
    worst = calibrate_groups(comparisons, groups, 0.1)
    assert overall.tolerance == 0.549
    assert (worst.tolerance, worst.attribute, worst.group) == (0.499, "cohort", "a")
    rows = {row.group: row for row in worst.groups}
    assert (rows["a"].tolerance, rows["b"].tolerance) == (0.499, 0.749)
    assert (rows["a"].fmr.errors, rows["a"].fnmr.errors, rows["a"].fnmr.trials) == (0, 1, 2)  # 0.7 is beyond 0.499
    assert len(worst.warnings) == 2 and "needs at least 30" in worst.warnings[0]
    assert worst.to_dict()["worst"] == {"attribute": "cohort", "group": "a"}


def test_groups_that_label_no_photo_are_refused() -> None:
    comparisons, _ = _hand()
    with pytest.raises(ManifestError, match="labels none of the 9 photo"):
        evaluate_groups(comparisons, Groups("photo", ("g",), {"/elsewhere.jpg": ("a",)}, "g.csv"), 0.6)
    with pytest.raises(ManifestError, match="at most 50"):
        Groups("photo", ("id",), {f"/p{k}.jpg": (str(k),) for k in range(51)}, "g.csv")


# -- reading GROUPS.csv ---------------------------------------------------------------------------


def test_read_groups_keys_photos_by_path_and_skips_empty_labels(tmp_path: Path) -> None:
    (tmp_path / "groups.csv").write_text("Photo,Sex,Age band\nsub/a.jpg,female,\n/abs/b.jpg,male,30+\n")
    groups = read_groups(tmp_path / "groups.csv")
    assert (groups.key, groups.attributes) == ("photo", ("sex", "age band"))
    assert groups.labels[str(tmp_path / "sub" / "a.jpg")] == ("female", None)
    assert groups.labels["/abs/b.jpg"] == ("male", "30+")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,sex\na.jpg,f\n", "its header must be photo (or subject)"),
        ("photo\na.jpg\n", "its header must be photo (or subject)"),
        ("photo,subject,sex\na.jpg,x,f\n", "its header must be photo (or subject)"),
        ("subject,sex\nann,f\nann,m\n", "line 3: the subject 'ann' is already on line 2"),
        ("photo,sex\na.jpg,f\n./a.jpg,m\n", "line 3: the photo './a.jpg' is already on line 2"),
        ("subject,sex\n,f\n", "line 2: the subject is empty"),
        ("subject,sex\n", "has no rows"),
    ],
    ids=["no-key", "no-attribute", "two-keys", "twice", "same-photo-twice", "empty-key", "no-rows"],
)
def test_read_groups_refuses_what_it_cannot_use(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "groups.csv").write_text(text)
    with pytest.raises(ManifestError, match=message.replace("(", "\\(").replace(")", "\\)")):
        read_groups(tmp_path / "groups.csv")


# -- real photos --------------------------------------------------------------------------------






def _expected_counts() -> dict[str, tuple[int, int, int]]:
    """Per source group of tests/data/groups.csv: photos, same-person and different-person pairs within it."""
    source = {row["photo"]: row["source"] for row in csv.DictReader(GROUPS.open())}
    counts = {name: [sum(1 for s in source.values() if s == name), 0, 0] for name in set(source.values())}
    for row in csv.DictReader(PAIRS.open()):
        if source[row["file_x"]] == source[row["file_y"]]:
            counts[source[row["file_x"]]][1 if row["same"] == "yes" else 2] += 1
    return {name: (c[0], c[1], c[2]) for name, c in counts.items()}


def test_real_photos_per_group(cached_encoder: CachedEncoder, tmp_path: Path) -> None:
    comparisons = compare_pairs(PAIRS, encoder=cached_encoder)
    assert comparisons.scores().genuine.size == 34 and comparisons.photos[0].endswith("img1.jpg")
    groups = read_groups(GROUPS)
    report = evaluate_groups(comparisons, groups, 0.6)
    got = {g.group: (g.photos, g.fnmr.trials, g.fmr.trials) for g in report.attributes[0].groups}
    assert got == _expected_counts() and set(got) == {"edge", "people", "probes"}
    for group in report.attributes[0].groups:  # the example photos separate at 0.6, in every group
        assert group.fmr.errors == 0 and group.fnmr.errors == 0 and group.fte.errors == 0
    assert not any("overlap" in w for w in report.warnings)  # equal rates: no gap to doubt
    plot = tmp_path / "groups.png"
    plot_groups(comparisons, groups, report, plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "matplotlib.pyplot" not in sys.modules


def test_cli_evaluate_groups_json_table_and_plot(tmp_path: Path, cli_encoder: CachedEncoder) -> None:
    plot = tmp_path / "groups.png"
    result = runner.invoke(app, ["evaluate", str(PAIRS), "--groups", str(GROUPS), "--groups-plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["accuracy"] == 1.0 and body["groups"]["plot"] == str(plot) and plot.stat().st_size > 1000
    (source,) = body["groups"]["attributes"]
    edge = next(g for g in source["groups"] if g["group"] == "edge")
    assert (edge["photos"], edge["fnmr"]["trials"], edge["fmr"]["trials"]) == (3, 3, 0)
    assert edge["fnmr"] == {"rate": 0.0, "ci_low": 0.0, "ci_high": round(1 - 0.025 ** (1 / 3), 6), "errors": 0, "trials": 3}
    assert "warning: source = 'edge': only 3 same-person and 0 different-person pair(s)" in result.stderr
    table = runner.invoke(app, ["evaluate", str(PAIRS), "--groups", str(GROUPS)])
    assert table.exit_code == 0, table.output
    assert "By source at tolerance 0.6" in table.stdout and "FMR differential by source" in table.stdout
    plain = runner.invoke(app, ["evaluate", str(PAIRS), "--json"])
    assert "groups" not in json.loads(plain.stdout) and "warning" not in plain.stderr  # unchanged without --groups


def test_cli_evaluate_identities_groups_by_subject(tmp_path: Path, cli_encoder: CachedEncoder) -> None:
    folder = tmp_path / "identities"
    layout = {
        "biden": ["people/biden/biden.jpg", "people/biden/biden2.jpg"],
        "obama": ["people/obama/obama.jpg", "people/obama/obama2.jpg", "probes/obama1.jpg"],
        "rose_leslie": ["people/rose_leslie/img1.jpg", "people/rose_leslie/img2.jpg"],
    }
    for person, photos in layout.items():
        (folder / person).mkdir(parents=True)
        for photo in photos:
            shutil.copyfile(EXAMPLES / photo, folder / person / Path(photo).name)
    groups = tmp_path / "groups.csv"
    groups.write_text("subject,cohort\nbiden,a\nobama,a\nrose_leslie,b\nnobody,b\n")
    result = runner.invoke(app, ["evaluate", "--identities", str(folder), "--groups", str(groups), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["people"] == 3 and body["rank1"] == 1.0  # the 1:N figures as before
    a, b = body["groups"]["attributes"][0]["groups"]
    # a: 5 photos, 1 + 3 same-person pairs, 10 - 4 = 6 different-person; b: 2 photos, 1 pair
    assert (a["photos"], a["fnmr"]["trials"], a["fmr"]["trials"]) == (5, 4, 6)
    assert (b["photos"], b["fnmr"]["trials"], b["fmr"]["trials"]) == (2, 1, 0)
    pairs = {tuple(p["groups"]): p for p in body["groups"]["attributes"][0]["group_pairs"]}
    assert pairs[("a", "b")]["fmr"]["trials"] == 10 and pairs[("a", "b")]["fmr"]["errors"] == 0


def test_identify_is_evaluate_identities_split_in_two(cached_encoder: CachedEncoder, tmp_path: Path) -> None:
    (tmp_path / "empty_person").mkdir()  # counts as a person, takes its turn in the every-third rule
    for person in ("biden", "obama"):
        shutil.copytree(EXAMPLES / "people" / person, tmp_path / person)
    comparisons = compare_identities(tmp_path, encoder=cached_encoder)
    assert comparisons.people == ("biden", "empty_person", "obama") and len(comparisons.photos) == 4
    assert comparisons.first.size == 6 and int(comparisons.same.sum()) == 2
    result = identify(comparisons, 0.6)
    assert (result.people, result.enrolled_people, result.mated_probes, result.nonmated_probes) == (3, 1, 1, 2)


def test_cli_calibrate_groups(cli_encoder: CachedEncoder) -> None:
    result = runner.invoke(app, ["calibrate", str(PAIRS), "--target-fmr", "0.01", "--groups", str(GROUPS), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["stored"] is False and body["groups"]["target_fmr"] == 0.01
    rows = body["groups"]["groups"]
    assert {r["group"] for r in rows} == {"people", "probes"}  # edge has no different-person pair within it
    assert body["groups"]["tolerance"] == min(r["tolerance"] for r in rows)
    assert "warning: source = 'edge': no different-person pairs within the group" in result.stderr
    table = runner.invoke(app, ["calibrate", str(PAIRS), "--target-fmr", "0.01", "--groups", str(GROUPS)])
    assert "Worst group: source = " in table.stdout and "(overall: 0.695)" in table.stdout  # yunet, the default (hog: 0.689)
    assert "The overall tolerance is the stricter one: keep it" in table.stdout  # within-group pairs alone allow more
    plain = runner.invoke(app, ["calibrate", str(PAIRS), "--target-fmr", "0.01", "--json"])
    assert "groups" not in json.loads(plain.stdout)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["evaluate", str(PAIRS), "--groups-plot", "g.png"], 2, "--groups-plot draws the curves per group: give --groups"),
        (["evaluate", str(PAIRS), "--groups", str(PAIRS)], 1, "its header must be photo (or subject)"),
        (["evaluate", str(PAIRS), "--groups", "missing.csv"], 1, "missing.csv"),
    ],
    ids=["plot-without-groups", "not-a-groups-file", "missing"],
)
def test_cli_groups_errors_are_one_line(args: list[str], code: int, message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.output


# -- the London Set script, on a stand-in of its layout ----------------------------------------------


def test_fairness_benchmark_on_a_london_shaped_folder(tmp_path: Path) -> None:
    data = tmp_path / "stim"
    people = {"001": ("female", "24", "white", "rose_leslie/img1.jpg", "rose_leslie/img2.jpg"),
              "002": ("male", "", "black", "obama/obama.jpg", "obama/obama2.jpg"),
              "003": ("male", "31", "white", "biden/biden.jpg", "biden/biden2.jpg")}
    for view in ("neutral_front", "smiling_front"):
        (data / "inst" / view).mkdir(parents=True)
    (data / "data-raw").mkdir()
    rows = ["face_id,face_age,face_gender,face_eth"]
    for face, (sex, age, ethnicity, neutral, smiling) in people.items():
        shutil.copyfile(EXAMPLES / "people" / neutral, data / "inst" / "neutral_front" / f"{face}_03.jpg")
        shutil.copyfile(EXAMPLES / "people" / smiling, data / "inst" / "smiling_front" / f"{face}_08.jpg")
        rows.append(f"{face},{age or 'NA'},{sex},{ethnicity}")
    (data / "data-raw" / "london_info.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fairness.py"), str(data), "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    summary = json.loads(done.stdout)
    assert summary["pairs"] == "3 same-person, 12 different-person"
    assert summary["sex=male"].startswith("photos 4 FTE 0; FNMR 0.0000") and "age_band=18-24" in summary
    report = json.loads((out / "report.json").read_text())
    assert report["attribution"].startswith("Face Research Lab London Set, CC BY 4.0")
    assert [a["attribute"] for a in report["groups"]["attributes"]] == ["sex", "age_band", "ethnicity", "sex_ethnicity"]
    assert report["groups"]["attributes"][1]["unlabelled_photos"] == 2  # the age not given
    assert (out / "groups.png").stat().st_size > 1000 and (out / "ATTRIBUTION.txt").exists()
