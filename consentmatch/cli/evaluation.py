"""Commands that measure accuracy: evaluate, calibrate."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Optional, TYPE_CHECKING

import typer

from ..text import visible
from ..text import shown as _shown
from .common import (
    table,
    app,
    out,
    JsonOption,
    ActorOption,
    DetectorOption,
    error,
    fail,
    mapped_errors,
    open_gallery,
    print_json,
    progress_bar,
    settings,
)

# -- evaluate / calibrate --------------------------------------------------------------------

if TYPE_CHECKING:
    from ..evaluate import Comparisons, Failure, GroupEvaluation, Groups, Rate
    from ..settings import Settings

GroupsOption = Annotated[
    Optional[Path],
    typer.Option(
        "--groups",
        metavar="GROUPS.csv",
        help="Also report per group: a CSV of photo (or subject: the person's folder name) then any columns of "
        "labels, e.g. photo,sex,age_band,ethnicity.",
        show_default=False,
    ),
]

EvaluateToleranceOption = Annotated[
    float,
    typer.Option(
        "--tolerance",
        "-t",
        min=0.0,
        max=2.0,
        help="The tolerance at which accuracy, FMR and FNMR (or FNIR and FPIR) are reported.",
    ),
]


def _rate(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@app.command()
def evaluate(
    pairs: Annotated[
        Optional[Path],
        typer.Argument(
            metavar="PAIRS.csv", help="CSV of file_x,file_y,same (same: yes/no, true/false, 1/0).", show_default=False
        ),
    ] = None,
    identities: Annotated[
        Optional[Path],
        typer.Option(
            "--identities",
            help="Open-set 1:N instead: a folder per person. Half of each person's photos are enrolled, the "
            "rest are probes; every third person (in name order) is never enrolled.",
            show_default=False,
        ),
    ] = None,
    tolerance: EvaluateToleranceOption = 0.6,
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", help="Write the DET curve and the two distance histograms to this PNG.", show_default=False),
    ] = None,
    groups: GroupsOption = None,
    groups_plot: Annotated[
        Optional[Path],
        typer.Option("--groups-plot", help="With --groups: write one DET curve per group to this PNG.", show_default=False),
    ] = None,
    detector: DetectorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Measure accuracy on your own people: 1:1 pairs (FMR, FNMR, EER) or open-set 1:N.

    With PAIRS.csv: every distinct photo is encoded once, and each pair of photos of the same
    person (same=yes) or of different people (same=no) is compared. Reports accuracy, FMR and
    FNMR at the tolerance, the EER, and FNMR at FMR 1e-2, 1e-3 and 1e-4 where there are enough
    different-person pairs (at least 1/FMR). With --identities DIR: rank-1, FNIR and FPIR.
    Photos without exactly one face are failures to enrol: listed on stderr and counted, not
    fatal (exit 0). No gallery is read or written.

    With --groups GROUPS.csv, also per group of each column and per pair of groups: FMR over
    different-person pairs within the group (NIST IR 8280), FNMR, failures to enrol and
    distance quantiles, each with its counts and a 95% Clopper-Pearson interval, and the
    differential (highest/lowest) across groups; with --identities, over every pair of the
    folder's photos. Groups too small to conclude anything are named in warnings on stderr.

    **Example:** `consentmatch evaluate pairs.csv --tolerance 0.6 --plot det.png --json`
    """
    if groups_plot is not None and groups is None:
        fail("--groups-plot draws the curves per group: give --groups GROUPS.csv too.", 2)
    if pairs is not None and identities is None:
        _evaluate_pairs(pairs, tolerance, plot, as_json, settings(detector), groups, groups_plot)
    elif identities is not None and pairs is None:
        if plot is not None:
            fail("--plot draws the curves of a pairs file: use it with PAIRS.csv, not --identities.", 2)
        _evaluate_identities(identities, tolerance, as_json, settings(detector), groups, groups_plot)
    else:
        fail("Give PAIRS.csv or --identities DIR, exactly one: see consentmatch evaluate --help.", 2)


def _evaluate_pairs(
    pairs: Path,
    tolerance: float,
    plot: Path | None,
    as_json: bool,
    settings: Settings,
    groups: Path | None,
    groups_plot: Path | None,
) -> None:
    from .. import evaluate as evaluation
    from ..policy import check_tolerance

    with mapped_errors():
        check_tolerance(tolerance)
        grouping = evaluation.read_groups(groups) if groups is not None else None  # before the long part
        with progress_bar("encoding") as advance:
            comparisons = evaluation.compare_pairs(pairs, progress=advance, settings=settings)
        scores = comparisons.scores()
        result = evaluation.evaluate(scores, tolerance)
        report = _group_report(comparisons, grouping, tolerance, groups_plot)
        if plot is not None:
            evaluation.plot(scores, result, plot)
    _print_failures(result.failures)
    if report is not None:
        _print_group_warnings(report)
    if as_json:
        body = result.to_dict() | {"plot": str(plot) if plot else None}
        if report is not None:
            body |= {"groups": report.to_dict() | {"plot": str(groups_plot) if groups_plot else None}}
        print_json(body)
        return
    grid = table("Measure", "Value", title=f"{result.pairs} pair(s) from {_shown(pairs)}")
    grid.add_row("Pairs", f"{result.genuine_pairs} same person, {result.impostor_pairs} different people")
    grid.add_row("Tolerance", f"{result.tolerance:g}")
    grid.add_row("Accuracy", _rate(result.accuracy))
    grid.add_row("FMR", _rate(result.fmr))
    grid.add_row("FNMR", _rate(result.fnmr))
    grid.add_row("EER", f"{_rate(result.eer)} at tolerance {_rate(result.eer_tolerance, 3)}")
    for target, fnmr in result.fnmr_at_fmr:
        grid.add_row(f"FNMR at FMR {target:g}", _rate(fnmr))
    grid.add_row("Failures to enrol", f"{len(result.failures)} ({result.photos} photo(s) encoded)")
    out.print(grid)
    for note in result.notes:
        out.print(f"note: {_shown(note)}")
    if plot is not None:
        out.print(f"Plot written to {_shown(plot)}.")
    if report is not None:
        _print_group_report(report, groups_plot)


def _evaluate_identities(
    folder: Path, tolerance: float, as_json: bool, settings: Settings, groups: Path | None, groups_plot: Path | None
) -> None:
    from .. import evaluate as evaluation
    from ..policy import check_tolerance

    with mapped_errors():
        check_tolerance(tolerance)
        grouping = evaluation.read_groups(groups) if groups is not None else None
        with progress_bar("encoding") as advance:
            comparisons = evaluation.compare_identities(folder, progress=advance, settings=settings)
        result = evaluation.identify(comparisons, tolerance)
        report = _group_report(comparisons, grouping, tolerance, groups_plot)
    _print_failures(result.failures)
    if report is not None:
        _print_group_warnings(report)
    if as_json:
        body = result.to_dict()
        if report is not None:
            body |= {"groups": report.to_dict() | {"plot": str(groups_plot) if groups_plot else None}}
        print_json(body)
        return
    grid = table("Measure", "Value", title=f"Open-set 1:N on {_shown(folder)}")
    grid.add_row("People", f"{result.people} ({result.enrolled_people} enrolled, {result.templates} template(s))")
    grid.add_row("Probes", f"{result.mated_probes} mated, {result.nonmated_probes} non-mated")
    grid.add_row("Tolerance", f"{result.tolerance:g}")
    grid.add_row("Rank-1", _rate(result.rank1))
    grid.add_row("FNIR", _rate(result.fnir))
    grid.add_row("FPIR", _rate(result.fpir))
    grid.add_row("Failures to enrol", str(len(result.failures)))
    out.print(grid)
    for note in result.notes:
        out.print(f"note: {_shown(note)}")
    if report is not None:
        _print_group_report(report, groups_plot)


def _group_report(
    comparisons: Comparisons, groups: Groups | None, tolerance: float, plot: Path | None
) -> GroupEvaluation | None:
    """The per-group figures (and their plot) when --groups was given; inside mapped_errors."""
    from .. import evaluate as evaluation

    if groups is None:
        return None
    report = evaluation.evaluate_groups(comparisons, groups, tolerance)
    if plot is not None:
        evaluation.plot_groups(comparisons, groups, report, plot)
    return report


def _interval(rate: Rate) -> str:
    if rate.rate is None or rate.low is None or rate.high is None:
        return "-"
    return f"{rate.rate:.4f} [{rate.low:.4f}-{rate.high:.4f}] {rate.errors:,}/{rate.trials:,}"


def _print_group_warnings(report: GroupEvaluation) -> None:
    for warning in report.warnings:
        print(f"warning: {visible(warning)}", file=sys.stderr, flush=True)


def _print_group_report(report: GroupEvaluation, plot: Path | None) -> None:
    """Per attribute: a table of its groups, the FMR between groups, and the differentials."""
    for attribute in report.attributes:
        name = _shown(attribute.attribute)
        grid = table(
            "Group",
            "Photos",
            "Failure to enrol [95% CI] n",
            "FNMR [95% CI] errors/pairs",
            "FMR, same group [95% CI] errors/pairs",
            "Same-person distance median (q05-q95)",
            "Different-person distance median (q05-q95)",
            title=f"By {name} at tolerance {report.tolerance:g}",
        )
        for group in attribute.groups:
            grid.add_row(
                _shown(group.group),
                f"{group.photos:,}",
                _interval(group.fte),
                _interval(group.fnmr),
                _interval(group.fmr),
                _spread(group.genuine.quantiles),
                _spread(group.impostor.quantiles),
            )
        out.print(grid)
        crossed = [p for p in attribute.group_pairs if p.first != p.second]
        if crossed:
            between = table("Groups", "FMR between them [95% CI] errors/pairs", title=f"By {name}: different people of two groups")
            for pair in crossed:
                between.add_row(f"{_shown(pair.first)} x {_shown(pair.second)}", _interval(pair.fmr))
            out.print(between)
        for gap in (attribute.fmr_differential, attribute.fnmr_differential):
            if gap is not None:
                if gap.highest_rate == gap.lowest_rate:
                    out.print(f"{gap.measure} differential by {name}: {gap.highest_rate:.4f} in every group (no difference seen).")
                    continue
                ratio = f"{gap.ratio:.1f}x" if gap.ratio is not None else "lowest is 0"
                verdict = "the intervals do not overlap" if gap.conclusive else "the intervals overlap: may be chance"
                out.print(
                    f"{gap.measure} differential by {name}: highest {_shown(gap.highest)} {gap.highest_rate:.4f}, lowest "
                    f"{_shown(gap.lowest)} {gap.lowest_rate:.4f} ({ratio}; {verdict})."
                )
    if plot is not None:
        out.print(f"Plot per group written to {_shown(plot)}.")


def _spread(quantiles: tuple[tuple[str, float], ...]) -> str:
    points = dict(quantiles)
    if not points:
        return "-"
    return f"{points['median']:.3f} ({points['q05']:.3f}-{points['q95']:.3f})"


def _print_failures(failures: Sequence[Failure]) -> None:
    for failure in failures:
        where = f" (row {failure.row})" if failure.row is not None else ""
        error(f"{failure.photo or '-'}{where}: {failure.reason}")


@app.command()
def calibrate(
    pairs: Annotated[
        Path,
        typer.Argument(metavar="PAIRS.csv", help="CSV of file_x,file_y,same: your own people, many different-person pairs."),
    ],
    target_fmr: Annotated[
        float,
        typer.Option("--target-fmr", help="The false-match rate to meet, e.g. 0.001 (one in a thousand).", show_default=False),
    ],
    gallery: Annotated[
        Optional[str],
        typer.Option("--gallery", "-g", envvar="CONSENTMATCH_GALLERY", show_envvar=True,
                     help="Store the tolerance in this gallery's policy (audited)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only print the tolerance; store nothing.")] = False,
    groups: GroupsOption = None,
    actor: ActorOption = None,
    as_json: JsonOption = False,
    detector: DetectorOption = None,
) -> None:
    """Choose the tolerance that meets a target false-match rate on your own people.

    Prints the largest tolerance (in steps of 0.001) whose FMR on the pairs is at most the
    target, with the FMR and FNMR it gives, and stores it as the gallery policy's tolerance
    (unless --dry-run or no gallery is named). Warns on stderr when there are fewer than
    3/target different-person pairs: the data cannot then support the target.

    With --groups GROUPS.csv, also the tolerance at which the worst group meets the target
    (calibrated on each group's own different-person pairs), beside the overall one; the
    overall one is the one stored.

    **Example:** `consentmatch calibrate pairs.csv --target-fmr 0.001 --json`
    """
    from .. import evaluate as evaluation

    by_group = None
    target = None if dry_run else gallery
    stored = target is not None
    with mapped_errors(), ExitStack() as stack:
        evaluation.check_target_fmr(target_fmr)
        grouping = evaluation.read_groups(groups) if groups is not None else None
        # the gallery must exist (a mistyped path is refused, never created), checked before the long part
        g = stack.enter_context(open_gallery(target, actor, existing=True)) if target is not None else None
        with progress_bar("encoding") as advance:
            comparisons = evaluation.compare_pairs(pairs, progress=advance, settings=settings(detector))
        result = evaluation.calibrate(comparisons.scores(), target_fmr)
        if grouping is not None:
            by_group = evaluation.calibrate_groups(comparisons, grouping, target_fmr)
        if g is not None:
            g.set_policy("tolerance", result.tolerance)
    _print_failures(result.failures)
    if result.warning:
        print(f"warning: {visible(result.warning)}", file=sys.stderr, flush=True)
    for warning in by_group.warnings if by_group else ():
        print(f"warning: {visible(warning)}", file=sys.stderr, flush=True)
    if as_json:
        body = {**result.to_dict(), "stored": stored, "gallery": str(gallery) if stored else None}
        if by_group is not None:
            body["groups"] = by_group.to_dict()
        print_json(body)
        return
    if stored:
        out.print(f"Stored tolerance {result.tolerance:.3f} in the policy of {_shown(gallery)}.")
    out.print(
        f"Tolerance {result.tolerance:.3f}: FMR {result.fmr:.4f} (target {result.target_fmr:g}), "
        f"FNMR {_rate(result.fnmr)}, on {result.genuine_pairs} same-person and {result.impostor_pairs} "
        "different-person pair(s)."
    )
    if by_group is not None:
        if by_group.tolerance is None or by_group.attribute is None or by_group.group is None:
            out.print("Worst group: none has different-person pairs within it, so none can be calibrated.")
            return
        grid = table("Attribute", "Group", "Own tolerance", "FMR at worst [95% CI] errors/pairs", "FNMR at worst [95% CI] errors/pairs",
                     title=f"Per group at tolerance {by_group.tolerance:.3f} (the worst group's)")
        for row in by_group.groups:
            grid.add_row(_shown(row.attribute), _shown(row.group), f"{row.tolerance:.3f}", _interval(row.fmr), _interval(row.fnmr))
        out.print(grid)
        advice = (
            f"To use it: consentmatch policy set tolerance {by_group.tolerance:.3f} -g GALLERY."
            if by_group.tolerance < result.tolerance
            else "The overall tolerance is the stricter one: keep it (pairs across groups count there too)."
        )
        out.print(
            f"Worst group: {_shown(by_group.attribute)} = {_shown(by_group.group)} meets FMR {by_group.target_fmr:g} at tolerance "
            f"{by_group.tolerance:.3f} (overall: {result.tolerance:.3f}); at it every group meets the target. {advice}"
        )
