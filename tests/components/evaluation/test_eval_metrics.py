"""pass@k, flips, cost of a pass, determinism and Pareto frontier, checked on hand-computed cases."""

import math

import pytest

from components.evaluation.metrics import cost_of_pass, determinism, flips, pareto_frontier, pass_at_k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 0, 2, 0.0),  # no correct sample: C(4,2)/C(4,2) = 1
        (4, 4, 2, 1.0),  # all correct
        (4, 3, 2, 1.0),  # k=2 > n-c=1: every pair holds a correct sample
        (4, 1, 1, 0.25),  # pass@1 is c/n
        (10, 3, 1, 0.3),
        (8, 2, 2, 13 / 28),  # 1 - C(6,2)/C(8,2) = 1 - 15/28
        (5, 2, 3, 9 / 10),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_hand_cases(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_large_n_stays_finite() -> None:
    # C(1000, 500) overflows a float; the product form does not. With c=1, pass@k is k/n exactly.
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_bad_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_flips_counts_only_shared_ids() -> None:
    champion = {"a": True, "b": True, "c": False, "d": False, "only_champ": True}
    candidate = {"a": True, "b": False, "c": True, "d": False, "only_cand": False}
    result = flips(champion, candidate)
    # shared: a, b, c, d. b regresses (negative), c improves (positive).
    assert (result.negative, result.positive, result.shared) == (1, 1, 4)


def test_flips_disjoint_sets_share_nothing() -> None:
    result = flips({"a": True}, {"b": False})
    assert (result.negative, result.positive, result.shared) == (0, 0, 0)


def test_cost_of_pass() -> None:
    assert cost_of_pass(120, 4) == 30.0
    assert cost_of_pass(7, 2) == 3.5
    assert cost_of_pass(50, 0) == math.inf
    assert cost_of_pass(0, 0) == math.inf
    with pytest.raises(ValueError):
        cost_of_pass(-1, 1)


def test_determinism_identical() -> None:
    report = determinism(["x", "y", "z"], ["x", "y", "z"])
    assert (report.identical, report.mismatches, report.first_mismatch) == (True, 0, None)


def test_determinism_mismatches() -> None:
    report = determinism(["x", "y", "z", "w"], ["x", "Y", "z", "W"])
    assert (report.identical, report.mismatches, report.first_mismatch) == (False, 2, 1)


def test_determinism_length_difference() -> None:
    # Equal prefix, b has two extra items: 2 mismatches, first at index len(a) = 2.
    report = determinism(["x", "y"], ["x", "y", "z", "w"])
    assert (report.identical, report.mismatches, report.first_mismatch) == (False, 2, 2)


def test_pareto_frontier() -> None:
    points = [
        ("a", 0.6, 100),
        ("b", 0.7, 200),
        ("c", 0.65, 300),  # dominated by b (more accurate and smaller)
        ("d", 0.5, 150),  # dominated by a
        ("e", 0.6, 100),  # ties a exactly: neither dominates
        ("f", 0.9, None),  # unknown size, but nothing reaches 0.9: on the frontier, listed last
        ("g", 0.7, None),  # unknown size and b reaches 0.7 with a known size: dominated
    ]
    assert pareto_frontier(points) == ["a", "e", "b", "f"]
    assert pareto_frontier([]) == []
