"""The evaluation's picture: a DET curve and the distance histograms, as one PNG."""

from __future__ import annotations

import os

import numpy as np

from .errors import InvalidArgumentError
from .evaluate_metrics import Evaluation, Scores

__all__ = ["plot"]


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
