"""Cost-accuracy evaluation of a router from its predicted P(correct) matrix, whatever built it.

A cost-aware router sends image i to argmax_j p_correct_pred[i, j] - lambda * costs[j] / max(costs)
(ties to the earlier expert). Sweeping lambda traces a curve from "always the most likely right"
(lambda = 0) to "always the cheapest"; the curve sits next to each single expert and the oracle,
and its area (RouterBench's AIQ) sums it up in one number. `calibrate_cost_weight` turns a budget
per image into the lambda that meets it on a reference set, as RouteLLM's calibrate_threshold
turns a share of strong-model calls into a score threshold."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.plots import finish_axes, new_figure, plain_text, save_png
from router.base import relative_costs

DEFAULT_CURVE_POINTS = 50
# How far past the last breakpoint the default grid reaches, so its last lambda is strictly in
# the "cheapest always wins" regime and not on a tie.
GRID_HEADROOM = 1.05


def _relative_costs(costs: np.ndarray) -> np.ndarray:
    """costs / max(costs): lambda is then in units of P(correct) per most expensive expert."""
    if costs.ndim != 1 or not len(costs):
        raise ValueError(f"costs must be a non-empty vector, got shape {costs.shape}")
    if not np.isfinite(costs).all() or costs.min() < 0:
        raise ValueError(f"costs must be finite and non-negative, got {costs.tolist()}")
    return relative_costs(costs)


def _checked(p_correct_pred: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p_correct_pred, costs = np.asarray(p_correct_pred, dtype=float), np.asarray(costs, dtype=float)
    if p_correct_pred.ndim != 2 or p_correct_pred.shape[1] != len(costs):
        raise ValueError(
            f"p_correct_pred must be (n, {len(costs)}) for {len(costs)} costs, got {p_correct_pred.shape}"
        )
    return p_correct_pred, costs


def routed_choices(p_correct_pred: np.ndarray, costs: np.ndarray, cost_weight: float) -> np.ndarray:
    """(n,) index of the expert each image goes to at this lambda (ties to the earlier expert)."""
    p_correct_pred, costs = _checked(p_correct_pred, costs)
    return np.argmax(p_correct_pred - cost_weight * _relative_costs(costs), axis=1)


def cost_breakpoints(p_correct_pred: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Sorted distinct lambdas > 0 at which some image's two experts tie; the choices (and so the
    cost and accuracy) are constant between two of them, and past the last one every image goes
    to its cheapest expert."""
    p_correct_pred, costs = _checked(p_correct_pred, costs)
    relative = _relative_costs(costs)
    # Experts a, b with r_a > r_b tie at lambda = (p_a - p_b) / (r_a - r_b).
    costlier, cheaper = np.nonzero(relative[:, None] > relative[None, :])
    gain = p_correct_pred[:, costlier] - p_correct_pred[:, cheaper]
    ties = gain / (relative[costlier] - relative[cheaper])
    return np.unique(ties[ties > 0])


def _past_last_breakpoint(breakpoints: np.ndarray) -> float:
    """A lambda where every image already goes to its cheapest expert (1.0 when no breakpoint is
    positive: then any lambda > 0 does, only ties at 0 differ)."""
    return float(breakpoints[-1]) * GRID_HEADROOM if len(breakpoints) and breakpoints[-1] > 0 else 1.0


def _mean_routed_cost(p_correct_pred: np.ndarray, costs: np.ndarray, cost_weight: float) -> float:
    return float(costs[routed_choices(p_correct_pred, costs, cost_weight)].mean())


def cost_accuracy_curve(
    p_correct_pred: np.ndarray,
    correct: np.ndarray,
    costs: np.ndarray,
    lambdas: Sequence[float] | None = None,
) -> pd.DataFrame:
    """The routed system at each lambda: columns lambda, accuracy (share of images whose chosen
    expert is actually right), cost (mean cost per image, in the units of `costs`) and share_<j>
    (share of images sent to expert j).

    p_correct_pred (n, k) is the router's prediction, correct (n, k) the experts' actual outcomes.
    Default lambdas: DEFAULT_CURVE_POINTS evenly from 0 to a little past the last breakpoint, where
    every image goes to its cheapest expert."""
    p_correct_pred, costs = _checked(p_correct_pred, costs)
    correct = np.asarray(correct, dtype=bool)
    if correct.shape != p_correct_pred.shape:
        raise ValueError(
            f"correct {correct.shape} and p_correct_pred {p_correct_pred.shape} must have one shape"
        )
    if not len(correct):
        raise ValueError("no images to draw a curve from")
    if lambdas is None:
        breakpoints = cost_breakpoints(p_correct_pred, costs)
        lambdas = np.linspace(0.0, _past_last_breakpoint(breakpoints), DEFAULT_CURVE_POINTS)
    rows = []
    for cost_weight in lambdas:
        chosen = routed_choices(p_correct_pred, costs, cost_weight)
        shares = np.bincount(chosen, minlength=len(costs)) / len(chosen)
        rows.append(
            {
                "lambda": float(cost_weight),
                "accuracy": float(correct[np.arange(len(chosen)), chosen].mean()),
                "cost": float(costs[chosen].mean()),
                **{f"share_{j}": float(share) for j, share in enumerate(shares)},
            }
        )
    return pd.DataFrame(rows)


def area_under_cost_curve(costs: Sequence[float], accuracies: Sequence[float]) -> float:
    """RouterBench's AIQ (Average Improvement in Quality) of a set of (cost, accuracy) points.

    Hu et al. 2024, "RouterBench: A Benchmark for Multi-LLM Routing System" (arXiv:2403.12031,
    section 3; reference code: withmartian/routerbench, evaluation/AIQ.py). Any two operating
    points can be mixed at random, so the router reaches every point of their convex hull; and
    paying more never has to buy less quality. Its achievable quality at cost c is therefore the
    non-decreasing convex hull R~(c) of the points: the upper convex hull from the cheapest point
    (the best accuracy at that cost) to the cheapest point of highest accuracy, then flat. AIQ is
    its mean over the cost range:

        AIQ = 1 / (c_max - c_min) * integral from c_min to c_max of R~(c) dc

    integrated exactly (R~ is piecewise linear). A single cost (zero range) gives the best
    accuracy at that cost. (The reference code divides the same area by c_max alone, as if c_min
    were 0; the paper's c_max - c_min is used here, so a curve that starts at a high cost is not
    penalised for the range it does not cover.)"""
    points_cost, points_accuracy = np.asarray(costs, dtype=float), np.asarray(accuracies, dtype=float)
    if points_cost.shape != points_accuracy.shape or points_cost.ndim != 1 or not len(points_cost):
        raise ValueError(
            "need as many costs as accuracies, at least one: "
            f"got {points_cost.shape} and {points_accuracy.shape}"
        )
    hull = _non_decreasing_convex_hull(points_cost, points_accuracy)
    cost_range = points_cost.max() - points_cost.min()
    if cost_range == 0:
        return float(hull[0][1])
    # Flat from the hull's last (highest-accuracy) vertex to the costliest point.
    hull.append((float(points_cost.max()), hull[-1][1]))
    hull_cost, hull_accuracy = np.array(hull).T
    return float(np.trapezoid(hull_accuracy, hull_cost) / cost_range)


def _non_decreasing_convex_hull(costs: np.ndarray, accuracies: np.ndarray) -> list[tuple[float, float]]:
    """Vertices, by increasing cost, of the upper convex hull from the best point at the lowest cost
    to the cheapest point with the highest accuracy (monotone chain)."""
    order = np.lexsort((-accuracies, costs))  # by cost, then best accuracy first
    best = accuracies.max()
    last = next(i for i in order if accuracies[i] == best)
    vertices: list[tuple[float, float]] = []
    for index in order:
        point = (float(costs[index]), float(accuracies[index]))
        if vertices and point[0] == vertices[-1][0]:
            continue  # a worse accuracy at a cost already on the hull
        # Drop the last vertex while it lies on or below the segment from the one before to this point.
        while len(vertices) >= 2 and _cross(vertices[-2], vertices[-1], point) >= 0:
            vertices.pop()
        vertices.append(point)
        if index == last:
            break
    return vertices


def _cross(origin: tuple[float, float], middle: tuple[float, float], end: tuple[float, float]) -> float:
    """> 0 when origin -> middle -> end turns left (middle lies below the chord origin -> end)."""
    return (middle[0] - origin[0]) * (end[1] - origin[1]) - (middle[1] - origin[1]) * (end[0] - origin[0])


def single_expert_points(
    correct: np.ndarray, costs: np.ndarray, names: Sequence[str]
) -> dict[str, tuple[float, float]]:
    """(cost per image, accuracy) of each expert used alone, by name."""
    correct, costs = np.asarray(correct, dtype=bool), np.asarray(costs, dtype=float)
    if correct.ndim != 2 or correct.shape[1] != len(costs) or len(names) != len(costs):
        raise ValueError(f"correct {correct.shape}, {len(costs)} costs and {len(names)} names do not match")
    return {name: (float(costs[j]), float(correct[:, j].mean())) for j, name in enumerate(names)}


def oracle_point(correct: np.ndarray, costs: np.ndarray) -> tuple[float, float]:
    """(cost per image, accuracy) of the oracle router: each image goes to its cheapest expert that
    is right, or to the cheapest expert when none is."""
    correct, costs = np.asarray(correct, dtype=bool), np.asarray(costs, dtype=float)
    if correct.ndim != 2 or correct.shape[1] != len(costs) or not len(correct):
        raise ValueError(f"correct must be (n > 0, {len(costs)}), got {correct.shape}")
    cost_if_right = np.where(correct, costs[None, :], np.inf).min(axis=1)
    paid = np.where(np.isfinite(cost_if_right), cost_if_right, costs.min())
    return float(paid.mean()), float(correct.any(axis=1).mean())


def calibrate_cost_weight(p_correct_pred: np.ndarray, costs: np.ndarray, budget: float) -> float:
    """The smallest lambda whose mean cost per image (units of `costs`) on this reference set is at
    most `budget`: RouteLLM's calibrate_threshold idea (pick the knob on reference data so that
    a target share of calls, here a spend, is met), applied to lambda.

    The mean cost only changes at the breakpoints and never rises with lambda (at a tie the choice
    lies between the choices on either side), so a bisection over the breakpoints finds it. When
    the budget is met only strictly past a breakpoint, the midpoint to the next one is returned:
    any lambda in that open interval meets it, and the midpoint is safe from rounding."""
    p_correct_pred, costs = _checked(p_correct_pred, costs)
    if not len(p_correct_pred):
        raise ValueError("no reference images to calibrate on")
    if not np.isfinite(budget):
        raise ValueError(f"the budget must be a finite cost per image, got {budget}")
    if costs.min() > budget:
        raise ValueError(
            f"a budget of {budget:g} per image is below the cheapest expert's cost ({costs.min():g}): "
            "no lambda can meet it"
        )
    # Every lambda where the cost may change (0 included: ties at 0 go to the earlier expert,
    # whatever it costs), each followed by one inside the interval after it, where it is constant.
    edges = np.concatenate(([0.0], cost_breakpoints(p_correct_pred, costs)))
    inside = np.append((edges[:-1] + edges[1:]) / 2, _past_last_breakpoint(edges))
    candidates = np.column_stack((edges, inside)).ravel()
    low, high = 0, len(candidates) - 1  # the last candidate always meets it: the cheapest for everyone
    while low < high:
        middle = (low + high) // 2
        if _mean_routed_cost(p_correct_pred, costs, candidates[middle]) <= budget:
            high = middle
        else:
            low = middle + 1
    return float(candidates[low])


def plot_cost_accuracy(
    curve_frame: pd.DataFrame | None,
    expert_points: dict[str, tuple[float, float]],
    oracle: tuple[float, float],
    path: Path,
    title: str,
    extra_points: dict[str, tuple[float, float]] | None = None,
) -> Path:
    """Save a PNG of the router's cost-accuracy curve (a `cost_accuracy_curve` frame, its AIQ in
    the legend; None when there is no router, as for a benchmark run), each single expert, the
    oracle (a star) and any extra (cost, accuracy) points such as a random router or the merged
    experts. Cost per image on x, accuracy on y."""
    figure, (axes,) = new_figure()
    if curve_frame is not None:
        curve = curve_frame.sort_values(["cost", "lambda"])
        aiq = area_under_cost_curve(curve["cost"], curve["accuracy"])
        router_label = f"router (AIQ {aiq:.3f})"
        axes.plot(curve["cost"], curve["accuracy"], "-o", markersize=3, color="tab:blue", label=router_label)
    for name, (cost, accuracy) in expert_points.items():
        axes.plot(cost, accuracy, "s", markersize=7, label=plain_text(name))
        axes.annotate(plain_text(name), (cost, accuracy), textcoords="offset points", xytext=(5, 5), fontsize=8)
    for name, (cost, accuracy) in (extra_points or {}).items():
        axes.plot(cost, accuracy, "D", markersize=6, label=plain_text(name))
    axes.plot(*oracle, "*", markersize=14, color="gold", markeredgecolor="black", label="oracle")
    finish_axes(axes, title, "mean cost per image", "accuracy")
    return save_png(figure, path)
