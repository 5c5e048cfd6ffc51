"""ROC curves and reliability diagrams of several systems' P(fake) on the same images, as PNGs.

Each system's scores may hold NaN where it gave no answer; those images are left out of that
system's curve only, as the metric tables leave out failed rows. Labels come from benchmark files
and expert cards, so they are drawn as plain text (a `$` never starts matplotlib's math mode)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score, roc_curve

from benchmarks.metrics import expected_calibration_error


def plain_text(text: str) -> str:
    """`text` as matplotlib draws it literally: an unescaped `$` would start math mode, and a
    name like `$\\x$` would make the whole figure fail to render."""
    return str(text).replace("$", r"\$")


def new_figure(height_ratios: tuple[float, ...] = (1.0,)) -> tuple[Figure, list]:
    """A bare Figure on an Agg canvas and its stacked axes. No pyplot: no global state, safe in a
    server or a worker thread, and no display needed."""
    figure = Figure(figsize=(7, 5 + 1.5 * (len(height_ratios) - 1)), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(height_ratios), 1, squeeze=False, gridspec_kw={"height_ratios": height_ratios})
    return figure, list(axes[:, 0])


def finish_axes(axes, title: str, x_label: str, y_label: str, legend_at: str = "best") -> None:
    """The labels, title, grid and legend every plot here has."""
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(plain_text(title))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc=legend_at)


def save_png(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _answered(p_fake: np.ndarray, is_fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p_fake, is_fake = np.asarray(p_fake, dtype=float), np.asarray(is_fake, dtype=bool)
    if p_fake.shape != is_fake.shape:
        raise ValueError(f"scores of shape {p_fake.shape} for {is_fake.shape} labels")
    answered = ~np.isnan(p_fake)
    return p_fake[answered], is_fake[answered]


@dataclass(frozen=True)
class RocCurve:
    false_alarm: np.ndarray
    detection: np.ndarray
    auc: float


def roc_curves(scores: Mapping[str, np.ndarray], is_fake: np.ndarray) -> dict[str, RocCurve]:
    """The ROC curve and AUC of each system that saw both real and fake images (fake = positive)."""
    curves = {}
    for name, values in scores.items():
        p_fake, truth = _answered(values, is_fake)
        if len(np.unique(truth)) == 2:
            false_alarm, detection, _ = roc_curve(truth, p_fake)
            curves[name] = RocCurve(false_alarm, detection, float(roc_auc_score(truth, p_fake)))
    return curves


@dataclass(frozen=True)
class Reliability:
    mean_p_fake: np.ndarray  # per occupied bin
    share_fake: np.ndarray  # per occupied bin
    ece: float  # as the metric tables report it (expected_calibration_error's bins)
    p_fake: np.ndarray  # the answered scores, for the histogram


def reliability_curves(scores: Mapping[str, np.ndarray], is_fake: np.ndarray, n_bins: int = 10) -> dict[str, Reliability]:
    """Per system with at least one answer: the share of fakes against the mean P(fake) in each
    of n_bins equal-width bins, and the ECE."""
    curves = {}
    for name, values in scores.items():
        p_fake, truth = _answered(values, is_fake)
        if len(p_fake):
            share_fake, mean_p_fake = calibration_curve(truth, p_fake, n_bins=n_bins, strategy="uniform")
            curves[name] = Reliability(mean_p_fake, share_fake, expected_calibration_error(p_fake, truth), p_fake)
    return curves


def _say_empty(axes, message: str) -> None:
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes, color="0.4")


def plot_roc(scores: Mapping[str, np.ndarray], is_fake: np.ndarray, path: Path, title: str) -> Path:
    """Save a PNG of one ROC curve per system (its AUC in the legend), with the chance diagonal."""
    figure, (axes,) = new_figure()
    axes.plot([0, 1], [0, 1], "--", color="0.6", linewidth=1, label="chance")
    curves = roc_curves(scores, is_fake)
    for name, curve in curves.items():
        axes.plot(curve.false_alarm, curve.detection, linewidth=1.5, label=plain_text(f"{name} (AUC {curve.auc:.3f})"))
    if not curves:
        _say_empty(axes, "no ROC curve: it needs both real and fake images")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    finish_axes(axes, title, "false-alarm rate (reals called fake)", "detection rate (fakes caught)", "lower right")
    return save_png(figure, path)


def plot_reliability(
    scores: Mapping[str, np.ndarray], is_fake: np.ndarray, path: Path, title: str, n_bins: int = 10
) -> Path:
    """Save a PNG of a reliability diagram: the share of fakes against the mean P(fake) per bin for
    each system (its ECE in the legend), the diagonal of perfect calibration, and below it how the
    system's P(fake) are spread."""
    figure, (diagram, spread) = new_figure(height_ratios=(3.0, 1.0))
    diagram.plot([0, 1], [0, 1], "--", color="0.6", linewidth=1, label="perfectly calibrated")
    curves = reliability_curves(scores, is_fake, n_bins)
    edges = np.linspace(0, 1, n_bins + 1)
    for name, curve in curves.items():
        (line,) = diagram.plot(
            curve.mean_p_fake, curve.share_fake, "-o", markersize=3, linewidth=1.5,
            label=plain_text(f"{name} (ECE {curve.ece:.3f})"),
        )
        spread.hist(curve.p_fake, bins=edges, histtype="step", color=line.get_color(), linewidth=1.2)
    if not curves:
        _say_empty(diagram, "no reliability diagram: no system answered")
    diagram.set_xlim(0, 1)
    diagram.set_ylim(-0.01, 1.01)
    finish_axes(diagram, title, "", "share of fakes", "upper left")
    spread.set_xlim(0, 1)
    spread.set_xlabel("P(fake)")
    spread.set_ylabel("images")
    spread.grid(alpha=0.3)
    return save_png(figure, path)
