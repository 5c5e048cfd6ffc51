"""Cost-accuracy curves, AIQ, the budget calibration of lambda and the plot, on matrices whose
answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchmarks.curves import (
    area_under_cost_curve,
    calibrate_cost_weight,
    cost_accuracy_curve,
    cost_breakpoints,
    oracle_point,
    plot_cost_accuracy,
    routed_choices,
    single_expert_points,
)

# Expert A is cheap (cost 1) and right on the first half; B is expensive (cost 2) and always right.
CORRECT = np.array([[1, 1], [1, 1], [0, 1], [0, 1]], dtype=bool)
COSTS = np.array([1.0, 2.0])
# The router believes in A less and less down the list; relative costs are 0.5 and 1, so image i
# switches from B to A at lambda = (1 - p_A) / 0.5: 0.5, 1, 1.5, 2.
P_CORRECT = np.array([[0.75, 1.0], [0.5, 1.0], [0.25, 1.0], [0.0, 1.0]])


def test_lambda_zero_routes_to_the_likely_right_expert_and_a_large_lambda_to_the_cheap_one():
    curve = cost_accuracy_curve(P_CORRECT, CORRECT, COSTS)
    assert list(curve.columns) == ["lambda", "accuracy", "cost", "share_0", "share_1"]
    first, last = curve.iloc[0], curve.iloc[-1]
    assert (first["lambda"], first["accuracy"], first["cost"], first["share_1"]) == (0.0, 1.0, 2.0, 1.0)
    assert (last["accuracy"], last["cost"], last["share_0"]) == (0.5, 1.0, 1.0)
    assert last["lambda"] > 2.0 and len(curve) == 50
    assert curve["cost"].is_monotonic_decreasing


def test_the_curve_at_chosen_lambdas():
    curve = cost_accuracy_curve(P_CORRECT, CORRECT, COSTS, lambdas=[0.0, 0.75, 1.25, 3.0])
    # At 1.25 images 0 and 1 go to A (right), 2 and 3 to B (right): still perfect at cost 1.5.
    assert curve["cost"].tolist() == [2.0, 1.75, 1.5, 1.0]
    assert curve["accuracy"].tolist() == [1.0, 1.0, 1.0, 0.5]
    assert curve["share_0"].tolist() == [0.0, 0.25, 0.5, 1.0]


def test_ties_go_to_the_earlier_expert():
    assert routed_choices(np.array([[0.5, 0.5]]), np.array([1.0, 1.0]), 0.0).tolist() == [0]
    assert routed_choices(np.array([[0.5, 1.0]]), COSTS, 1.0).tolist() == [0]


def test_breakpoints():
    np.testing.assert_allclose(cost_breakpoints(P_CORRECT, COSTS), [0.5, 1.0, 1.5, 2.0])
    assert len(cost_breakpoints(P_CORRECT, np.array([1.0, 1.0]))) == 0


def test_single_experts_and_the_oracle():
    assert single_expert_points(CORRECT, COSTS, ["A", "B"]) == {"A": (1.0, 0.5), "B": (2.0, 1.0)}
    # The oracle pays 1 on the first half (A is right) and 2 on the rest: 1.5, all right.
    assert oracle_point(CORRECT, COSTS) == (1.5, 1.0)
    nobody_right = np.array([[0, 0], [1, 1]], dtype=bool)
    assert oracle_point(nobody_right, COSTS) == (1.0, 0.5)


def test_aiq_of_a_known_hull():
    # Hull: (0, .5) -> (1, .9) -> (2, 1.0), then flat to 3; (3, .7) lies below it.
    # Area = (.5 + .9) / 2 + (.9 + 1) / 2 + 1 = 2.65 over a range of 3.
    assert area_under_cost_curve([0, 1, 2, 3], [0.5, 0.9, 1.0, 0.7]) == pytest.approx(2.65 / 3)
    # A point under the chord does not count: (1, .5) lies below (0, .5) -> (2, 1).
    assert area_under_cost_curve([0, 1, 2], [0.5, 0.5, 1.0]) == pytest.approx(0.75)
    # Order of the points does not matter, and a worse duplicate at a cost is ignored.
    assert area_under_cost_curve([2, 0, 1, 0], [1.0, 0.5, 0.5, 0.2]) == pytest.approx(0.75)


def test_aiq_of_a_single_point_or_a_zero_cost_range_is_the_accuracy():
    assert area_under_cost_curve([1.0], [0.8]) == 0.8
    assert area_under_cost_curve([2.0, 2.0], [0.6, 0.7]) == 0.7
    with pytest.raises(ValueError, match="as many costs as accuracies"):
        area_under_cost_curve([1.0, 2.0], [0.5])


def test_aiq_of_the_router_curve_lies_between_its_ends_and_the_oracle():
    curve = cost_accuracy_curve(P_CORRECT, CORRECT, COSTS)
    # The curve goes (1, .5) -> (1.5, 1) -> flat: area .375 + .5 over a range of 1.
    assert area_under_cost_curve(curve["cost"], curve["accuracy"]) == pytest.approx(0.875)


def test_calibrated_lambda_meets_the_budget_exactly():
    # A budget of 1.5 per image means two images on A: images 0 and 1 switch at lambda 0.5 and 1.
    cost_weight = calibrate_cost_weight(P_CORRECT, COSTS, budget=1.5)
    assert cost_weight == 1.0
    assert COSTS[routed_choices(P_CORRECT, COSTS, cost_weight)].mean() == 1.5
    assert COSTS[routed_choices(P_CORRECT, COSTS, np.nextafter(cost_weight, 0))].mean() > 1.5
    assert calibrate_cost_weight(P_CORRECT, COSTS, budget=2.0) == 0.0
    assert calibrate_cost_weight(P_CORRECT, COSTS, budget=1.0) == 2.0
    assert calibrate_cost_weight(P_CORRECT, COSTS, budget=1.3) == 1.5


def test_calibration_past_a_tie_that_goes_to_the_expensive_expert():
    # B first: at lambda = 1 image 1 ties and goes to B, so the budget is met only just past 1.
    p_correct, costs = P_CORRECT[:, ::-1], COSTS[::-1]
    cost_weight = calibrate_cost_weight(p_correct, costs, budget=1.5)
    assert 1.0 < cost_weight < 1.5
    assert costs[routed_choices(p_correct, costs, cost_weight)].mean() == 1.5


def test_a_budget_below_the_cheapest_expert_is_refused():
    with pytest.raises(ValueError, match="below the cheapest expert's cost"):
        calibrate_cost_weight(P_CORRECT, COSTS, budget=0.9)


def test_plot_is_a_png_with_something_drawn(tmp_path):
    curve = cost_accuracy_curve(P_CORRECT, CORRECT, COSTS)
    path = plot_cost_accuracy(
        curve,
        single_expert_points(CORRECT, COSTS, ["A", "B"]),
        oracle_point(CORRECT, COSTS),
        tmp_path / "plots" / "cost_accuracy.png",
        title="toy router",
        extra_points={"random": (1.5, 0.75)},
    )
    assert path.exists()
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("L"))
    assert pixels.min() < 100 and pixels.max() > 200
    assert np.unique(pixels).size > 20
