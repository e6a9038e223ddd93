"""Commands that measure accuracy: evaluate, calibrate."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Optional, TYPE_CHECKING

import typer
from rich.console import Console

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
    settings,
)

# -- evaluate / calibrate --------------------------------------------------------------------

if TYPE_CHECKING:
    from ..evaluate import Failure
    from ..settings import Settings

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


def _encoding_progress() -> tuple[Any, Callable[[int, int], None]]:
    """A transient progress bar on stderr (only on a terminal), and the callback that advances it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("encoding"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    task = progress.add_task("encode", total=None)
    return progress, lambda done, total: progress.update(task, completed=done, total=total)


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

    **Example:** `consentmatch evaluate pairs.csv --tolerance 0.6 --plot det.png --json`
    """
    if pairs is not None and identities is None:
        _evaluate_pairs(pairs, tolerance, plot, as_json, settings(detector))
    elif identities is not None and pairs is None:
        if plot is not None:
            fail("--plot draws the curves of a pairs file: use it with PAIRS.csv, not --identities.", 2)
        _evaluate_identities(identities, tolerance, as_json, settings(detector))
    else:
        fail("Give PAIRS.csv or --identities DIR, exactly one: see consentmatch evaluate --help.", 2)


def _evaluate_pairs(pairs: Path, tolerance: float, plot: Path | None, as_json: bool, settings: Settings) -> None:
    from .. import evaluate as evaluation
    from ..policy import check_tolerance

    progress, advance = _encoding_progress()
    with mapped_errors():
        check_tolerance(tolerance)
        with progress:
            scores = evaluation.score_pairs(pairs, progress=advance, settings=settings)
        result = evaluation.evaluate(scores, tolerance)
        if plot is not None:
            evaluation.plot(scores, result, plot)
    _print_failures(result.failures)
    if as_json:
        print_json(result.to_dict() | {"plot": str(plot) if plot else None})
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


def _evaluate_identities(folder: Path, tolerance: float, as_json: bool, settings: Settings) -> None:
    from ..evaluate import evaluate_identities
    from ..policy import check_tolerance

    progress, advance = _encoding_progress()
    with mapped_errors():
        check_tolerance(tolerance)
        with progress:
            result = evaluate_identities(folder, tolerance, progress=advance, settings=settings)
    _print_failures(result.failures)
    if as_json:
        print_json(result.to_dict())
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
    actor: ActorOption = None,
    as_json: JsonOption = False,
    detector: DetectorOption = None,
) -> None:
    """Choose the tolerance that meets a target false-match rate on your own people.

    Prints the largest tolerance (in steps of 0.001) whose FMR on the pairs is at most the
    target, with the FMR and FNMR it gives, and stores it as the gallery policy's tolerance
    (unless --dry-run or no gallery is named). Warns on stderr when there are fewer than
    3/target different-person pairs: the data cannot then support the target.

    **Example:** `consentmatch calibrate pairs.csv --target-fmr 0.001 --json`
    """
    from .. import evaluate as evaluation

    progress, advance = _encoding_progress()
    with mapped_errors():
        evaluation.check_target_fmr(target_fmr)
        with progress:
            scores = evaluation.score_pairs(pairs, progress=advance, settings=settings(detector))
        result = evaluation.calibrate(scores, target_fmr)
        stored = gallery is not None and not dry_run
        if stored:
            with open_gallery(gallery, actor) as g:  # type: ignore[arg-type]
                g.set_policy("tolerance", result.tolerance)
    _print_failures(result.failures)
    if result.warning:
        print(f"warning: {visible(result.warning)}", file=sys.stderr, flush=True)
    if as_json:
        print_json({**result.to_dict(), "stored": stored, "gallery": str(gallery) if stored else None})
        return
    if stored:
        out.print(f"Stored tolerance {result.tolerance:.3f} in the policy of {_shown(gallery)}.")
    out.print(
        f"Tolerance {result.tolerance:.3f}: FMR {result.fmr:.4f} (target {result.target_fmr:g}), "
        f"FNMR {_rate(result.fnmr)}, on {result.genuine_pairs} same-person and {result.impostor_pairs} "
        "different-person pair(s)."
    )
