"""Prompt selection and the report helpers, on hand-built records."""

import pytest

from components.difficulty.buckets import assign_bucket
from components.difficulty.estimate import DifficultyRecord
from components.difficulty.report import bucket_table, plot_pass_rate_histogram
from components.difficulty.selection import SelectionConfig, select_prompts


def rec(pid: str, mean: float) -> DifficultyRecord:
    # Beta(10 m, 10 (1-m)) has mean m; the interval is irrelevant to selection.
    return DifficultyRecord(
        id=pid, successes=0.0, trials=16, alpha=10 * mean, beta=10 * (1 - mean), mean=mean,
        lo=mean, hi=mean, bucket=assign_bucket(mean), stopped_early=False,
    )


POOL = [rec("solved", 0.97), rec("easy", 0.8), rec("learnable", 0.5), rec("hard", 0.1)] + [
    rec(f"u{i}", 0.01) for i in range(10)
]


def test_weighted_selection_drops_solved_and_subsamples_unsolved():
    out = select_prompts(POOL, SelectionConfig())
    ids = [s.id for s in out]
    assert "solved" not in ids
    unsolved = [i for i in ids if i.startswith("u")]
    assert len(unsolved) == 1  # round(0.1 * 10) = 1
    assert ids[:3] == ["easy", "learnable", "hard"]  # input order kept
    # Weights ∝ m(1-m): 0.16, 0.25, 0.09, 0.0099; total 0.5099.
    w = {s.id: s.weight for s in out}
    assert w["easy"] == pytest.approx(0.16 / 0.5099)
    assert w["learnable"] == pytest.approx(0.25 / 0.5099)
    assert w["hard"] == pytest.approx(0.09 / 0.5099)
    assert w[unsolved[0]] == pytest.approx(0.0099 / 0.5099)
    assert sum(w.values()) == pytest.approx(1.0)


def test_selection_is_deterministic_and_order_independent():
    cfg = SelectionConfig(keep_unsolved_fraction=0.3, seed=3)
    a = select_prompts(POOL, cfg)
    assert a == select_prompts(POOL, cfg)
    kept = lambda out: {s.id for s in out}  # noqa: E731
    assert kept(select_prompts(list(reversed(POOL)), cfg)) == kept(a)
    assert len([s for s in a if s.id.startswith("u")]) == 3  # round-half-up(0.3 * 10)


@pytest.mark.parametrize("fraction,expected", [(0.0, 0), (0.25, 3), (1.0, 10)])
def test_unsolved_fraction_rounding(fraction, expected):
    # 0.25 * 10 = 2.5 rounds half up to 3.
    out = select_prompts(POOL, SelectionConfig(keep_unsolved_fraction=fraction))
    assert len([s for s in out if s.id.startswith("u")]) == expected


def test_easy_to_hard_and_keep_solved():
    cfg = SelectionConfig(order="easy_to_hard", drop_solved=False, keep_unsolved_fraction=0.0)
    out = select_prompts(list(reversed(POOL)), cfg)
    assert [s.id for s in out] == ["solved", "easy", "learnable", "hard"]
    assert all(s.weight == pytest.approx(0.25) for s in out)


def test_order_none_keeps_input_order_uniform():
    out = select_prompts(POOL[:4], SelectionConfig(order="none"))
    assert [s.id for s in out] == ["easy", "learnable", "hard"]
    assert [s.weight for s in out] == pytest.approx([1 / 3] * 3)


def test_empty_selection():
    assert select_prompts([rec("s", 0.99)], SelectionConfig()) == []
    with pytest.raises(ValueError):
        SelectionConfig(order="random")


def test_bucket_table():
    rows = bucket_table([rec("a", 0.5), rec("b", 0.3), rec("c", 0.1), rec("d", 0.01)])
    by = {r["bucket"]: r for r in rows}
    assert [r["bucket"] for r in rows] == ["unsolved", "hard", "learnable", "easy", "solved"]
    assert by["learnable"]["prompts"] == 2 and by["learnable"]["share"] == 0.5
    assert by["learnable"]["mean_pass_rate"] == pytest.approx(0.4)
    assert by["hard"]["prompts"] == 1 and by["hard"]["mean_pass_rate"] == pytest.approx(0.1)
    assert by["solved"] == {"bucket": "solved", "prompts": 0, "share": 0.0, "mean_pass_rate": None}
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)


def test_histogram_png_written(tmp_path):
    path = plot_pass_rate_histogram(POOL, tmp_path / "plots" / "hist.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000
