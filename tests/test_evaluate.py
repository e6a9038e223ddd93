"""evaluate and calibrate: the metric math on known distributions, then the real models on tests/data/pairs.csv."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from consentmatch import EngineError, InvalidArgumentError, ManifestError
from consentmatch.cli import app
from consentmatch.evaluate import (
    Scores,
    calibrate,
    equal_error_rate,
    evaluate,
    evaluate_identities,
    open_set,
    rates,
    read_pairs,
    score_pairs,
    tolerance_for_fmr,
)
from consentmatch.settings import Settings

from .conftest import DATA, EXAMPLES, CachedEncoder

PAIRS = DATA / "pairs.csv"
runner = CliRunner()


# -- metric math on synthetic distances ----------------------------------------------------


def test_rates_count_within_and_beyond_the_tolerance() -> None:
    fmr, fnmr = rates([0.2, 0.5, 0.61], [0.59, 0.6, 0.7, 0.9], 0.6)
    assert fmr == 0.5  # 0.59 and 0.6 match: within the tolerance means <=
    assert fnmr == pytest.approx(1 / 3)
    assert rates([], [0.7], 0.6) == (0.0, None)


def test_eer_of_a_known_distribution() -> None:
    rng = np.random.default_rng(7)
    genuine, impostor = rng.normal(0.45, 0.1, 40_000), rng.normal(0.75, 0.1, 40_000)
    eer, tolerance = equal_error_rate(genuine, impostor) or (None, None)
    assert eer == pytest.approx(0.0668, abs=0.004)  # Phi(-1.5): the crossing is 1.5 sigma from each mean
    assert tolerance == pytest.approx(0.60, abs=0.005)


def test_eer_of_separable_distances_sits_between_them() -> None:
    assert equal_error_rate([0.1, 0.3, 0.4], [0.6, 0.8]) == (0.0, pytest.approx(0.5))
    assert equal_error_rate([0.3], []) is None


def test_tolerance_for_fmr_is_the_largest_step_under_the_first_refused_impostor() -> None:
    impostor = np.linspace(0.5, 1.0, 1000)  # FMR 1% allows the 10 nearest, refuses 0.505005...
    tolerance = tolerance_for_fmr(impostor, 0.01)
    assert tolerance == 0.505
    assert rates([], impostor, tolerance)[0] == 0.01
    assert rates([], impostor, tolerance + 0.001)[0] > 0.01
    assert tolerance_for_fmr([0.543, 0.9], 0.1) == 0.542  # exactly on a step: the step below
    with pytest.raises(InvalidArgumentError, match="in \\(0, 1\\)"):
        tolerance_for_fmr(impostor, 1.0)


def test_calibrate_chooses_the_tolerance_and_warns_on_too_few_impostors() -> None:
    rng = np.random.default_rng(3)
    scores = Scores(genuine=rng.normal(0.4, 0.08, 2000), impostor=rng.normal(0.8, 0.08, 3000), source="synthetic")
    result = calibrate(scores, 1e-3)
    assert result.fmr <= 1e-3 and result.warning is None
    assert rates(scores.genuine, scores.impostor, result.tolerance + 0.001)[0] > 1e-3  # the largest such step
    assert result.fnmr == rates(scores.genuine, scores.impostor, result.tolerance)[1]
    assert result.to_dict()["tolerance"] == result.tolerance and result.impostor_pairs == 3000
    few = calibrate(Scores(genuine=scores.genuine, impostor=scores.impostor[:2999]), 1e-3)
    assert few.warning and "2,999 different-person pairs" in few.warning and "3,000" in few.warning
    with pytest.raises(ManifestError, match="no usable different-person pair"):
        calibrate(Scores(genuine=[0.3], impostor=[]), 1e-3)


def test_evaluate_reports_fnmr_at_fmr_only_where_the_data_allow() -> None:
    rng = np.random.default_rng(5)
    scores = Scores(genuine=rng.normal(0.4, 0.1, 500), impostor=rng.normal(0.8, 0.1, 1500))
    result = evaluate(scores, 0.6)
    at = dict(result.fnmr_at_fmr)
    assert at[1e-2] is not None and at[1e-3] is not None and at[1e-4] is None
    assert any("FMR 0.0001 is null" in note and "10,000" in note for note in result.notes)
    body = result.to_dict()
    assert body["fnmr_at_fmr"] == {"0.01": pytest.approx(at[1e-2]), "0.001": pytest.approx(at[1e-3]), "0.0001": None}
    assert body["pairs"] == 2000 and body["accuracy"] == pytest.approx(1 - (result.fmr * 1500 + result.fnmr * 500) / 2000)
    with pytest.raises(InvalidArgumentError):
        evaluate(scores, 0.0)


def test_open_set_rates_on_known_vectors() -> None:
    basis = np.eye(128)
    templates = [basis[0], basis[1], basis[1] * 0.5 + basis[2] * 0.5]
    probes = [basis[0] * 0.95 + basis[3] * 0.05, basis[1], basis[2], basis[4]]
    # a and b enrolled; c and d never were; c's probe lies nearest b's second template
    result = open_set(templates, ["a", "b", "b"], probes, ["a", "b", "c", "d"], tolerance=1.0)
    assert (result.mated_probes, result.nonmated_probes, result.enrolled_people, result.templates) == (2, 2, 2, 3)
    assert result.rank1 == 1.0 and result.fnir == 0.0
    assert result.fpir == 0.5  # c's probe is 0.71 from b's second template: a false positive at 1.0
    strict = open_set(templates, ["a", "b", "b"], probes, ["a", "b", "c", "d"], tolerance=0.05)
    assert strict.fpir == 0.0 and strict.fnir == 0.5 and strict.rank1 == 1.0


# -- reading PAIRS.csv -----------------------------------------------------------------------


def test_read_pairs_resolves_paths_and_reports_bad_rows(tmp_path: Path) -> None:
    csv = tmp_path / "pairs.csv"
    csv.write_text(
        "file_x,file_y,same\n"
        "a.jpg,/abs/b.jpg,Yes\n"
        "a.jpg,c.jpg,0\n"
        "a.jpg,,yes\n"
        "a.jpg,c.jpg,maybe\n"
    )
    pairs, failures = read_pairs(csv)
    assert [(p.row, p.file_x, p.file_y, p.same) for p in pairs] == [
        (2, str(tmp_path / "a.jpg"), "/abs/b.jpg", True),
        (3, str(tmp_path / "a.jpg"), str(tmp_path / "c.jpg"), False),
    ]
    assert [(f.row, f.photo) for f in failures] == [(4, "a.jpg"), (5, "a.jpg")]
    assert "use yes/no, true/false or 1/0" in failures[1].reason
    (tmp_path / "bad.csv").write_text("x,y,same\n")
    with pytest.raises(ManifestError, match="lacks the column\\(s\\) file_x, file_y"):
        read_pairs(tmp_path / "bad.csv")
    with pytest.raises(ManifestError, match="does not exist"):
        read_pairs(tmp_path / "missing.csv")


# -- real models on real photos --------------------------------------------------------------




@pytest.fixture(scope="session")
def scores(cached_encoder: CachedEncoder) -> Scores:
    return score_pairs(PAIRS, encoder=cached_encoder)




def test_example_pairs_separate_at_the_default_tolerance(scores: Scores) -> None:
    assert (scores.genuine.size, scores.impostor.size, scores.photos, scores.failures) == (34, 119, 18, ())
    result = evaluate(scores, 0.6)
    assert result.accuracy == 1.0 and result.fmr == 0.0 and result.fnmr == 0.0
    assert result.eer == 0.0
    assert scores.genuine.max() < (result.eer_tolerance or 0) < scores.impostor.min()
    assert dict(result.fnmr_at_fmr)[1e-2] == 0.0 and dict(result.fnmr_at_fmr)[1e-3] is None


def test_photos_without_one_face_are_failures_to_enrol(tmp_path: Path, cached_encoder: CachedEncoder) -> None:
    csv = tmp_path / "pairs.csv"
    people, probes = EXAMPLES / "people", EXAMPLES / "probes"
    csv.write_text(
        "file_x,file_y,same\n"
        f"{people / 'obama/obama.jpg'},{people / 'obama/obama2.jpg'},yes\n"
        f"{people / 'obama/obama.jpg'},{probes / 'two_people.jpg'},no\n"
        f"{people / 'obama/obama.jpg'},{tmp_path / 'missing.jpg'},no\n"
        f"{people / 'obama/obama.jpg'},{people / 'biden/biden.jpg'},perhaps\n"
    )
    scores = score_pairs(csv, encoder=cached_encoder)
    assert (scores.genuine.size, scores.impostor.size, scores.skipped) == (1, 0, 2)
    reasons = sorted(f.reason.split(":")[0] for f in scores.failures)
    assert len(reasons) == 3 and any("2 faces found" in r for r in reasons) and any("does not exist" in r for r in reasons)
    result = evaluate(scores)
    assert result.fmr is None and result.fnmr == 0.0 and result.eer is None
    assert result.to_dict()["failures_to_enrol"] == 3


def test_the_encoder_comes_from_the_settings_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONSENTMATCH_ENCODER", "dlib")  # a valid choice: only the settings' own may be used
    with pytest.raises(EngineError, match="CONSENTMATCH_ENCODER='cuda' is not a backend"):
        score_pairs(PAIRS, settings=Settings(encoder="cuda"))
    (tmp_path / "someone").mkdir()
    shutil.copy(EXAMPLES / "people" / "obama" / "obama.jpg", tmp_path / "someone")
    with pytest.raises(EngineError, match="CONSENTMATCH_ENCODER='cuda' is not a backend"):
        evaluate_identities(tmp_path, settings=Settings(encoder="cuda"))


def test_the_evaluation_is_importable_from_consentmatch_evaluate() -> None:
    # The README's path: consentmatch.evaluate.score_pairs(path), then evaluate(scores, tolerance), plot(...).
    import consentmatch.evaluate as evaluation
    from consentmatch import evaluate_metrics, evaluate_plot

    for name in evaluation.__all__:
        assert getattr(evaluation, name) is not None
    assert evaluation.evaluate is evaluate_metrics.evaluate and evaluation.plot is evaluate_plot.plot
    assert set(evaluate_metrics.__all__) <= set(evaluation.__all__)


def test_open_set_on_a_folder_per_person(tmp_path: Path, cached_encoder: CachedEncoder) -> None:
    folder = _identities(tmp_path)
    result = evaluate_identities(folder, 0.6, encoder=cached_encoder)
    # in name order: alex, biden, kit_harington (never enrolled), lin, obama, rose_leslie (never enrolled)
    assert (result.people, result.enrolled_people, result.templates) == (6, 4, 5)
    assert (result.mated_probes, result.nonmated_probes) == (4, 5)
    assert result.rank1 == 1.0 and result.fnir == 0.0 and result.fpir == 0.0
    assert result.failures == ()


def _identities(root: Path) -> Path:
    people, probes = EXAMPLES / "people", EXAMPLES / "probes"
    layout = {
        "alex_lacamoire": [people / "alex_lacamoire/img1.jpg", probes / "alex_lacamoire1.jpg"],
        "biden": [people / "biden/biden.jpg", people / "biden/biden2.jpg"],
        "kit_harington": [people / "kit_harington/john1.jpeg", people / "kit_harington/john2.jpeg",
                          probes / "johnsnow_test1.jpg"],
        "lin_manuel_miranda": [probes / "lin-manuel-miranda.png"],
        "obama": [people / "obama/obama.jpg", people / "obama/obama2.jpg", probes / "obama1.jpg", probes / "obama_small.jpg"],
        "rose_leslie": [people / "rose_leslie/img1.jpg", people / "rose_leslie/img2.jpg"],
    }
    folder = root / "identities"
    for person, photos in layout.items():
        (folder / person).mkdir(parents=True)
        for photo in photos:
            shutil.copyfile(photo, folder / person / photo.name)
    (folder / "README.txt").write_text("not a person")
    return folder


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_evaluate_json_and_plot(tmp_path: Path, cli_encoder: CachedEncoder) -> None:
    plot = tmp_path / "det.png"
    result = runner.invoke(app, ["evaluate", str(PAIRS), "--plot", str(plot), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert {"pairs", "tolerance", "accuracy", "fmr", "fnmr", "eer"} <= set(body)
    assert (body["pairs"], body["tolerance"], body["accuracy"], body["eer"]) == (153, 0.6, 1.0, 0.0)
    assert body["fnmr_at_fmr"] == {"0.01": 0.0, "0.001": None, "0.0001": None}
    assert body["failures_to_enrol"] == 0 and body["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "matplotlib.pyplot" not in sys.modules  # drawn with the object API only


def test_cli_evaluate_table(cli_encoder: CachedEncoder) -> None:
    result = runner.invoke(app, ["evaluate", str(PAIRS), "-t", "0.5"])
    assert result.exit_code == 0, result.output
    assert "34 same person, 119 different people" in result.stdout
    assert "note: FNMR at FMR 0.001 is null: it needs at least 1,000 different-person pairs" in result.stdout


def test_cli_evaluate_identities(tmp_path: Path, cli_encoder: CachedEncoder) -> None:
    result = runner.invoke(app, ["evaluate", "--identities", str(_identities(tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert (body["rank1"], body["fnir"], body["fpir"], body["mated_probes"], body["nonmated_probes"]) == (1.0, 0.0, 0.0, 4, 5)


@pytest.mark.parametrize(
    "args",
    [["evaluate"], ["evaluate", "pairs.csv", "--identities", "people"], ["evaluate", "--identities", "people", "--plot", "p.png"]],
    ids=["neither", "both", "plot-without-pairs"],
)
def test_cli_evaluate_usage_errors(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_cli_evaluate_unreadable_pairs_file(tmp_path: Path) -> None:
    (tmp_path / "pairs.csv").write_text("left,right\n")
    result = runner.invoke(app, ["evaluate", str(tmp_path / "pairs.csv")])
    assert result.exit_code == 1 and "lacks the column(s) file_x, file_y, same" in result.stderr
    assert "Traceback" not in result.output


def test_cli_calibrate(cli_encoder: CachedEncoder) -> None:
    result = runner.invoke(app, ["calibrate", str(PAIRS), "--target-fmr", "0.01", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    # yunet (the default since issue 25) puts the one impostor pair under the target at 0.695
    # (0.696 before its coarse pass, which frames faces slightly differently); HOG's boxes gave
    # 0.689 (`calibrate --detector hog`): FMR 0.0084, FNMR 0 with each.
    assert body["tolerance"] == 0.695 and body["fmr"] <= 0.01 and body["fnmr"] == 0.0
    assert body["warning"].startswith("Only 119 different-person pairs")
    assert result.stderr.startswith("warning: Only 119 different-person pairs") and result.stderr.count("\n") == 1
    result = runner.invoke(app, ["calibrate", str(PAIRS), "--target-fmr", "0.01"])
    assert result.stdout.startswith("Tolerance 0.695: FMR 0.0084 (target 0.01), FNMR 0.0000")


@pytest.mark.parametrize("args", [[], ["--target-fmr", "0"], ["--target-fmr", "1.5"]], ids=["missing", "zero", "above-one"])
def test_cli_calibrate_needs_a_target_in_range(args: list[str]) -> None:
    result = runner.invoke(app, ["calibrate", str(PAIRS), *args])
    assert result.exit_code == 2


def test_import_stays_light() -> None:
    code = "import sys, consentmatch, consentmatch.cli; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
