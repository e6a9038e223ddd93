"""The evaluation's pictures: a DET curve and the distance histograms; DET curves per group."""

from __future__ import annotations

import os

import numpy as np

from .errors import InvalidArgumentError
from .evaluate_groups import GroupEvaluation, Groups
from .evaluate_metrics import Comparisons, Evaluation, Scores

__all__ = ["plot", "plot_groups"]


def plot(scores: Scores, evaluation: Evaluation, path: str | os.PathLike[str]) -> None:
    """Write a PNG: the DET curve (FNMR against FMR) and the two distance histograms.

    matplotlib is imported here, and drawn through its object API on an Agg canvas, so neither
    `import consentmatch` nor any global pyplot state is touched.

    Raises:
        InvalidArgumentError: the file cannot be written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    g, i = scores.genuine, scores.impostor
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    det, histogram = figure.subplots(1, 2)

    thresholds = np.unique(np.concatenate([g, i]))
    if g.size and i.size:
        # Log axes cannot show a zero rate: zeros are drawn at half of one pair's share.
        fmr_floor, fnmr_floor = 0.5 / i.size, 0.5 / g.size
        fmr = np.maximum(np.searchsorted(i, thresholds, side="right") / i.size, fmr_floor)
        fnmr = np.maximum(1.0 - np.searchsorted(g, thresholds, side="right") / g.size, fnmr_floor)
        det.plot(fmr, fnmr, color="tab:blue", drawstyle="steps-post")
        det.plot(
            [max(evaluation.fmr or 0.0, fmr_floor)],
            [max(evaluation.fnmr or 0.0, fnmr_floor)],
            "o",
            color="tab:red",
            label=f"tolerance {evaluation.tolerance:g}: FMR {evaluation.fmr:.4f}, FNMR {evaluation.fnmr:.4f}",
        )
        det.set_xscale("log")
        det.set_yscale("log")
        det.set_xlim(fmr_floor / 1.5, 1.5)
        det.set_ylim(fnmr_floor / 1.5, 1.5)
        det.legend(loc="upper right")
    det.set_xlabel("False match rate (FMR; 0 drawn at 1/2N)")
    det.set_ylabel("False non-match rate (FNMR; 0 drawn at 1/2N)")
    det.set_title(f"DET: {g.size:,} same-person, {i.size:,} different-person pairs")
    det.grid(True, which="both", alpha=0.3)

    top = float(thresholds.max()) if thresholds.size else 1.0
    bins = np.linspace(0.0, max(top, evaluation.tolerance) * 1.05, 50)
    if g.size:
        histogram.hist(g, bins=bins, alpha=0.6, color="tab:green", label="same person", density=True)
    if i.size:
        histogram.hist(i, bins=bins, alpha=0.6, color="tab:red", label="different people", density=True)
    histogram.axvline(evaluation.tolerance, color="black", linestyle="--", label=f"tolerance {evaluation.tolerance:g}")
    if evaluation.eer is not None and evaluation.eer_tolerance is not None:
        histogram.axvline(
            evaluation.eer_tolerance, color="tab:blue", linestyle=":", label=f"EER {evaluation.eer:.2%} at {evaluation.eer_tolerance:.3f}"
        )
    histogram.set_xlabel("Euclidean distance")
    histogram.set_ylabel("Density")
    histogram.set_title("Distances")
    histogram.legend()
    try:
        figure.savefig(os.fspath(path), format="png", dpi=100)
    except OSError as exc:
        raise InvalidArgumentError(
            f"Cannot write the plot to '{os.fspath(path)}' ({exc.strerror or exc}): name a writable .png path."
        ) from None


def plot_groups(comparisons: Comparisons, groups: Groups, report: GroupEvaluation, path: str | os.PathLike[str]) -> None:
    """Write a PNG, a row per attribute: one DET curve per group, and its FMR and FNMR against the tolerance.

    Each group is drawn from its own pairs (impostors of the same group, as NIST IR 8280), its
    point at the tolerance marked; a curve is only as good as its counts, which the legend
    gives. The right panel shows where each group's FMR crosses a target as the tolerance
    moves. Drawn like `plot`: no pyplot, no global state.

    Raises:
        InvalidArgumentError: the file cannot be written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(1, len(report.attributes))
    figure = Figure(figsize=(12, 4.4 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 2, squeeze=False)
    labels = {name: np.array(values, dtype=object) for name, values in groups.of(comparisons).items()}
    for (det, sweep), attribute in zip(axes, report.attributes):
        floor, top = 1.0, report.tolerance
        for number, group in enumerate(attribute.groups):
            members = labels[attribute.attribute] == group.group
            within = members[comparisons.first] & members[comparisons.second]
            g = np.sort(comparisons.distance[within & comparisons.same])
            i = np.sort(comparisons.distance[within & ~comparisons.same])
            if not g.size or not i.size:
                continue
            fmr_floor, fnmr_floor = 0.5 / i.size, 0.5 / g.size
            floor = min(floor, fmr_floor, fnmr_floor)
            top = max(top, float(i.max()), float(g.max()))
            thresholds = np.unique(np.concatenate([g, i]))
            fmr = np.maximum(np.searchsorted(i, thresholds, side="right") / i.size, fmr_floor)
            fnmr = np.maximum(1.0 - np.searchsorted(g, thresholds, side="right") / g.size, fnmr_floor)
            color = f"C{number % 10}"
            det.plot(fmr, fnmr, color=color, drawstyle="steps-post", label=f"{_plain(group.group)} ({g.size:,} / {i.size:,})")
            det.plot([max(group.fmr.rate or 0.0, fmr_floor)], [max(group.fnmr.rate or 0.0, fnmr_floor)], "o", color=color)
            sweep.plot(thresholds, fmr, color=color, drawstyle="steps-post", label=f"{_plain(group.group)}")
            sweep.plot(thresholds, fnmr, color=color, drawstyle="steps-post", linestyle="--")
        name = _plain(attribute.attribute)
        for axis in (det, sweep):
            axis.set_yscale("log")
            axis.set_ylim(floor / 1.5, 1.5)
            axis.grid(True, which="both", alpha=0.3)
        det.set_xscale("log")
        det.set_xlim(floor / 1.5, 1.5)
        det.set_xlabel("FMR, same-group impostors (0 drawn at 1/2N)")
        det.set_ylabel("FNMR (0 drawn at 1/2N)")
        det.set_title(f"DET by {name}: dots at tolerance {report.tolerance:g}")
        sweep.axvline(report.tolerance, color="black", linestyle=":", label=f"tolerance {report.tolerance:g}")
        sweep.set_xlim(0.0, top * 1.02)
        sweep.set_xlabel("Tolerance (Euclidean distance)")
        sweep.set_ylabel("FMR (solid), FNMR (dashed)")
        sweep.set_title(f"By {name}: error rates against the tolerance")
        if det.get_legend_handles_labels()[0]:
            det.legend(loc="lower left", fontsize="small", title="group (same / different-person pairs)", title_fontsize="small")
            sweep.legend(loc="lower right", fontsize="small")
    try:
        figure.savefig(os.fspath(path), format="png", dpi=72)
    except OSError as exc:
        raise InvalidArgumentError(
            f"Cannot write the plot to '{os.fspath(path)}' ({exc.strerror or exc}): name a writable .png path."
        ) from None


def _plain(label: str) -> str:
    """A user's label as literal text: matplotlib would read `$...$` as math, and control characters break lines."""
    return "".join(c if c.isprintable() else "?" for c in label).replace("$", r"\$")[:60]
