"""Online tracker decay maths, sampler state round trips and the rollout allocator."""

import json
import random

import pytest

from components.difficulty.estimate import DifficultyRecord
from components.difficulty.online import (
    OnlineTracker,
    ThompsonSampler,
    _gain,
    _moments,
    _utility,
    allocate_rollouts,
)
from components.difficulty.posterior import BetaPrior, beta_posterior, posterior_from_params


def rec(pid: str, alpha: float, beta: float) -> DifficultyRecord:
    m = alpha / (alpha + beta)
    return DifficultyRecord(pid, alpha - 1, int(alpha + beta - 2), alpha, beta, m, m, m, "learnable", False)


def test_decay_update_by_hand():
    t = OnlineTracker.from_records([rec("a", 5, 3), rec("z", 2, 2)], prior=BetaPrior(), decay=0.5)
    t.update(["a", "b"], [[1, 0, 1, 1], [0, 0]])
    # a: alpha = 1 + 0.5 * (5 - 1) + 3 = 6, beta = 1 + 0.5 * (3 - 1) + 1 = 3.
    assert t.params("a") == (6.0, 3.0)
    # b starts at the prior: alpha = 1 + 0 + 0 = 1, beta = 1 + 0 + 2 = 3.
    assert t.params("b") == (1.0, 3.0)
    assert t.params("z") == (2.0, 2.0)  # not in the update: untouched
    assert t.posterior("a").mean == pytest.approx(2 / 3)
    # difficulty = 1 - mean: a 1/3, b 3/4 -> average 13/24.
    assert t.mean_difficulty(["a", "b"]) == pytest.approx(13 / 24)


def test_decay_extremes_and_fixed_point():
    keep = OnlineTracker(decay=1.0)
    keep.update(["a"], [[1, 1]])
    keep.update(["a"], [[0.5, 0]])  # fractional reward counts 0.5 success
    assert keep.params("a") == (3.5, 2.5)  # plain accumulation: 1 + 2.5, 1 + 1.5
    forget = OnlineTracker(decay=0.0)
    forget.update(["a"], [[1, 1]])
    forget.update(["a"], [[0]])
    assert forget.params("a") == (1.0, 2.0)  # prior plus the latest group only
    # Same evidence s each time: alpha* = a0 + d (alpha* - a0) + s  =>  alpha* = a0 + s / (1 - d).
    t = OnlineTracker(decay=0.5)
    for _ in range(80):
        t.update(["a"], [[1, 0]])
    assert t.params("a") == pytest.approx((1 + 1 / 0.5, 1 + 1 / 0.5))


def test_repeated_ids_merge_before_decay():
    a = OnlineTracker.from_records([rec("c", 4, 4)], decay=0.8)
    b = OnlineTracker.from_records([rec("c", 4, 4)], decay=0.8)
    a.update(["c", "c"], [[1], 0.0])
    b.update(["c"], [[1, 0]])
    assert a.params("c") == b.params("c")


def test_update_validation():
    t = OnlineTracker()
    with pytest.raises(ValueError):
        t.update(["a"], [[1.2]])
    with pytest.raises(ValueError):
        t.update(["a", "b"], [[1]])
    with pytest.raises(ValueError):
        OnlineTracker(decay=1.5)
    with pytest.raises(ValueError):
        t.mean_difficulty([])


def test_tracker_state_round_trip_is_exact():
    t = OnlineTracker.from_records([rec("a", 3.3, 7.1)], prior=BetaPrior(alpha=0.5, beta=0.5), decay=0.93)
    t.update(["a", "b"], [[1, 0, 0.3], [1]])
    state = json.loads(json.dumps(t.state_dict()))
    u = OnlineTracker()
    u.load_state_dict(state)
    assert u.state_dict() == t.state_dict()
    assert u.posterior("a") == t.posterior("a")


def _pool():
    return [rec(f"p{i}", 1 + i % 5, 1 + (3 * i) % 7) for i in range(30)]


def test_thompson_restore_gives_the_same_next_batch():
    ids = [r.id for r in _pool()]
    s = ThompsonSampler(OnlineTracker.from_records(_pool(), decay=0.9), seed=7)
    s.sample_batch(ids, 5)
    s.tracker.update(ids[:4], [[1, 0], [0, 0], [1, 1], [0.5, 1]])
    saved = json.loads(json.dumps(s.state_dict()))
    expected = s.sample_batch(ids, 5)
    restored = ThompsonSampler(OnlineTracker(), seed=999)
    restored.load_state_dict(saved)
    assert restored.sample_batch(ids, 5) == expected
    assert restored.tracker.state_dict() == s.tracker.state_dict()
    # Same seed and state, fresh objects: same draws.
    a = ThompsonSampler(OnlineTracker.from_records(_pool()), seed=1)
    b = ThompsonSampler(OnlineTracker.from_records(_pool()), seed=1)
    assert a.sample_batch(ids, 8) == b.sample_batch(ids, 8)


def test_thompson_prefers_informative_prompts():
    # Beta(500,500) draws lie in [0.4, 0.6] with overwhelming probability (sd ~ 0.016), score
    # p(1-p) >= 0.24; Beta(1,1000) and Beta(1000,1) draws lie within 0.05 of 0 or 1 except with
    # probability about 0.95^1000, score < 0.05. So the mid prompt is always first.
    t = OnlineTracker.from_records([rec("zero", 1, 1000), rec("mid", 500, 500), rec("one", 1000, 1)])
    s = ThompsonSampler(t, seed=0)
    for _ in range(20):
        assert s.sample_batch(["zero", "mid", "one"], 1) == ["mid"]
    assert sorted(s.sample_batch(["zero", "mid", "one"], 10)) == ["mid", "one", "zero"]
    assert s.sample_batch([], 3) == []
    with pytest.raises(ValueError):
        s.sample_batch(["mid", "mid"], 1)


def test_allocation_score_by_hand():
    # Uniform posterior, q = 1 - p: U(n) = E[q] - E[q p^n] - E[q^(n+1)]
    #   = 1/2 - n! 1! / (n+2)! - 1/(n+2) = 1/2 - 1/((n+1)(n+2)) - 1/(n+2).
    # U(2) = 1/2 - 1/12 - 1/4 = 1/6; U(3) = 1/2 - 1/20 - 1/5 = 1/4; gain 1/12.
    assert _utility(1.0, 1.0, 2) == pytest.approx(1 / 6)
    assert _utility(1.0, 1.0, 3) == pytest.approx(1 / 4)
    assert _gain(1.0, 1.0, 2, 1 / 3, 1 / 3) == pytest.approx(1 / 12)  # E[p^2] = E[q^2] = 1/3
    # The incremental gain equals the utility difference for any Beta and n.
    rng = random.Random(1)
    for _ in range(50):
        a, b, n = rng.uniform(0.1, 20), rng.uniform(0.1, 20), rng.randint(1, 30)
        assert _gain(a, b, n, *_moments(a, b, n)) == pytest.approx(_utility(a, b, n + 1) - _utility(a, b, n))
        assert _gain(a, b, n + 1, *_moments(a, b, n + 1)) <= _gain(a, b, n, *_moments(a, b, n)) + 1e-15


def test_allocate_hand_case():
    # Two uniform posteriors: after min 2 each the gain of a 3rd is 1/12 for both (above); the
    # tie goes to index 0, then index 1 (its gain is now the larger).
    u = beta_posterior(0, 0)
    assert allocate_rollouts([u, u], 5) == [3, 2]
    assert allocate_rollouts([u, u], 6) == [3, 3]
    assert allocate_rollouts([], 10) == []


def test_allocate_favours_hard_but_solvable():
    mid = posterior_from_params(9, 9)  # p ~ 0.5: mixed groups after a few rollouts already
    hard = posterior_from_params(3, 15)  # p ~ 1/6: mixed only with many rollouts
    unsolved = posterior_from_params(1, 201)  # p ~ 0: extra rollouts rarely buy a success
    easy = posterior_from_params(15, 3)
    alloc = allocate_rollouts([mid, hard, unsolved, easy], 40, min_per_prompt=2)
    assert sum(alloc) == 40
    assert alloc[1] > alloc[0] and alloc[1] > alloc[2] and alloc[1] > alloc[3]
    assert alloc[2] == min(alloc)


def test_allocate_never_exceeds_budget_random():
    rng = random.Random(0)
    for _ in range(400):
        n = rng.randint(0, 12)
        posts = []
        for _ in range(n):
            trials = rng.randint(0, 20)
            prior = BetaPrior(alpha=rng.choice([0.1, 1.0]), beta=1.0)
            posts.append(beta_posterior(rng.randint(0, trials), trials, prior))
        lo = rng.randint(1, 4)
        hi = None if rng.random() < 0.3 else lo + rng.randint(0, 6)
        total = rng.randint(0, 120)
        alloc = allocate_rollouts(posts, total, lo, hi)
        assert len(alloc) == n and sum(alloc) <= total
        assert all(a == 0 or (lo <= a and (hi is None or a <= hi)) for a in alloc)
        cap = float("inf") if hi is None else n * hi
        if n and n * lo <= total <= cap:
            assert sum(alloc) == total and min(alloc) >= lo
        if n and total > cap:
            assert alloc == [hi] * n
        if n and total < n * lo:
            assert sum(a > 0 for a in alloc) == total // lo


def test_allocate_validation():
    u = beta_posterior(0, 0)
    with pytest.raises(ValueError):
        allocate_rollouts([u], 10, min_per_prompt=4, max_per_prompt=3)
    with pytest.raises(ValueError):
        allocate_rollouts([u], 10, min_per_prompt=0)
    with pytest.raises(ValueError):
        allocate_rollouts([u], -1)
