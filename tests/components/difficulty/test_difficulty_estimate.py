"""Sequential estimation with scripted, deterministic reward sources."""

import pytest
from pydantic import ValidationError

from components.difficulty.buckets import BucketConfig
from components.difficulty.estimate import (
    EstimateConfig,
    EstimateResult,
    compare_to_fixed_k,
    estimate_difficulty,
    read_parquet,
)
from components.difficulty.scripted import BernoulliRewards, PatternRewards

# Buckets chosen so the stopping rule is decidable by hand with Beta(1,1) and level 0.9:
# 4/4 -> Beta(5,1) has lo = 0.05^(1/5) = 0.549 >= 0.54 and hi < 1, so it lies in "solved";
# k/2k -> Beta(k+1,k+1) is symmetric about 0.5 = easy_min, so it always straddles learnable/easy.
TEST_BUCKETS = BucketConfig(unsolved_max=0.02, learnable_min=0.2, easy_min=0.5, solved_min=0.54)
ONES, HALF = [1.0], [1.0, 0.0]


def _cfg(**kw):
    return EstimateConfig(buckets=TEST_BUCKETS, **kw)


def test_all_ones_stops_at_min_samples_and_half_goes_to_max():
    source = PatternRewards([ONES, HALF])
    res = estimate_difficulty(["ones", "half"], source, _cfg())
    ones, half = res.records
    assert (ones.trials, ones.successes, ones.bucket, ones.stopped_early) == (4, 4.0, "solved", True)
    assert ones.lo == pytest.approx(0.05 ** 0.2)
    assert (half.trials, half.successes, half.stopped_early) == (16, 8.0, False)
    assert half.lo + half.hi == pytest.approx(1.0)
    assert half.mean == 0.5 and half.bucket == "easy"  # p = easy_min belongs to easy
    # Round 0 asks both prompts for 4 samples, rounds 1..3 only the unresolved one.
    assert source.calls == [([0, 1], 4, 0), ([1], 4, 1), ([1], 4, 2), ([1], 4, 3)]
    # 4 + 16 samples used against 2 * 16 for fixed k.
    assert (res.samples_used, res.samples_fixed_k, res.samples_saved) == (20, 32, 12)


def test_min_samples_delays_stopping():
    res = estimate_difficulty(["ones"], PatternRewards([ONES]), _cfg(min_samples=8))
    assert res.records[0].trials == 8  # interval fitted after 4, but 8 are required


def test_non_sequential_samples_exactly_max():
    res = estimate_difficulty(["ones", "half"], PatternRewards([ONES, HALF]), _cfg(sequential=False))
    assert [r.trials for r in res.records] == [16, 16]
    assert not any(r.stopped_early for r in res.records)
    assert res.samples_saved == 0


def test_last_round_is_truncated_to_max_samples():
    source = PatternRewards([HALF, HALF])
    res = estimate_difficulty(
        ["a", "b"], source, EstimateConfig(sequential=False, samples_per_round=5, max_samples=12)
    )
    assert [n for _, n, _ in source.calls] == [5, 5, 2]
    assert res.samples_used == 24


def test_defaults_do_not_confirm_extremes_within_16_samples():
    # Beta(1,1), level 0.9: 16/16 -> Beta(17,1), lo = 0.05^(1/17) = 0.838 < 0.95, so no early
    # stop; the mean 17/18 = 0.944 is just below 0.95, hence "easy". 0/16 -> mean 1/18 = 0.056
    # > 0.02, hence "hard". (Use a smaller prior, e.g. Beta(0.1, 0.1), to label extremes.)
    res = estimate_difficulty(["ones", "zeros"], PatternRewards([ONES, [0.0]]), EstimateConfig())
    ones, zeros = res.records
    assert (ones.trials, ones.bucket, ones.mean) == (16, "easy", pytest.approx(17 / 18))
    assert (zeros.trials, zeros.bucket, zeros.mean) == (16, "hard", pytest.approx(1 / 18))


def test_progress_reports_each_round():
    seen = []
    estimate_difficulty(["ones", "half"], PatternRewards([ONES, HALF]), _cfg(), progress=seen.append)
    assert [s["active"] for s in seen] == [1, 1, 1, 0]
    assert seen[-1]["samples_used"] == 20 and seen[-1]["finished"] == 2


def test_summary_and_parquet_round_trip(tmp_path):
    res = estimate_difficulty(["ones", "half"], PatternRewards([ONES, HALF]), _cfg())
    s = res.summary()
    assert s["count_solved"] == 1 and s["count_easy"] == 1 and s["count_hard"] == 0
    # means 5/6 (Beta(5,1)) and 1/2 (Beta(9,9)): average 2/3.
    assert s["mean_pass_rate"] == pytest.approx(2 / 3)
    assert s["samples_saved"] == 12 and s["saved_fraction"] == pytest.approx(12 / 32)
    path = res.to_parquet(tmp_path / "sub" / "difficulty.parquet")
    back = read_parquet(path)
    assert back.records == res.records
    assert (back.samples_used, back.samples_fixed_k) == (20, 32)
    assert back.config == res.config
    assert EstimateResult.read_parquet(path).summary() == s


def test_compare_to_fixed_k_counts_agreement():
    # "misleading" starts with 4 successes (sequential stops at "solved") then fails 12 times:
    # fixed k sees 4/16 -> Beta(5,13), mean 5/18 = 0.278 -> "learnable". The other two agree:
    # ones is solved either way (fixed: mean 17/18 >= 0.54), half is easy either way.
    misleading = [1.0] * 4 + [0.0] * 12
    patterns = [ONES, HALF, misleading]
    cmp = compare_to_fixed_k(
        ["ones", "half", "misleading"], lambda: PatternRewards(patterns), _cfg(), true_p=[1.0, 0.5, 0.25]
    )
    assert cmp.agreement == pytest.approx(2 / 3)
    assert (cmp.samples_sequential, cmp.samples_fixed_k, cmp.samples_saved) == (24, 48, 24)
    # Truth buckets: solved, easy, learnable; sequential misses "misleading", fixed k gets all.
    assert cmp.truth_agreement_sequential == pytest.approx(2 / 3)
    assert cmp.truth_agreement_fixed_k == 1.0
    assert "sequential" not in cmp.figures()


def test_bernoulli_source_is_independent_of_round_split():
    a = BernoulliRewards([0.3, 0.7], seed=5)
    b = BernoulliRewards([0.3, 0.7], seed=5)
    first = a([0, 1], 4, 0)
    second = a([0, 1], 4, 1)
    whole = b([0, 1], 8, 0)
    assert [f + s for f, s in zip(first, second)] == whole
    assert all(x in (0.0, 1.0) for row in whole for x in row)


def test_bad_inputs_rejected():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        estimate_difficulty(["x"], PatternRewards([[1.5]]), EstimateConfig())
    with pytest.raises(ValueError, match="expected 4"):
        estimate_difficulty(["x"], lambda idx, n, r: [[1.0] * (n - 1) for _ in idx], EstimateConfig())
    with pytest.raises(ValueError, match="unique"):
        estimate_difficulty(["x", "x"], PatternRewards([ONES, ONES]), EstimateConfig())
    with pytest.raises(ValidationError, match="min_samples"):
        EstimateConfig(min_samples=20, max_samples=16)
    with pytest.raises(ValidationError, match="temprature"):
        EstimateConfig(temprature=0.7)


def test_empty_pool():
    res = estimate_difficulty([], PatternRewards([]), EstimateConfig())
    assert res.records == [] and res.samples_used == 0 and res.samples_fixed_k == 0
