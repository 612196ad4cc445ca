"""Posterior maths and bucket boundaries; expected values derived by hand in the comments."""

import math

import pytest
from pydantic import ValidationError

from components.difficulty.buckets import BucketConfig, assign_bucket, bucket_of_interval
from components.difficulty.posterior import BetaPrior, beta_posterior


def test_uniform_prior_three_of_four():
    # Beta(1,1) + 3 successes, 1 failure -> Beta(4, 2), mean 4/6.
    post = beta_posterior(3, 4)
    assert (post.alpha, post.beta) == (4.0, 2.0)
    assert post.mean == pytest.approx(2 / 3)
    # Beta(4,2) density is 20 x^3 (1-x), so its CDF is 5x^4 - 4x^5; the 90% equal-tailed
    # interval puts 5% below lo and 5% above hi.
    cdf = lambda x: 5 * x**4 - 4 * x**5  # noqa: E731
    assert cdf(post.lo) == pytest.approx(0.05, abs=1e-9)
    assert cdf(post.hi) == pytest.approx(0.95, abs=1e-9)
    assert post.lo < post.mean < post.hi


def test_no_data_uniform_interval_is_the_tails():
    # Beta(1,1) is uniform: the 90% interval is exactly [0.05, 0.95].
    post = beta_posterior(0, 0)
    assert post.mean == 0.5
    assert post.lo == pytest.approx(0.05)
    assert post.hi == pytest.approx(0.95)


def test_all_successes_closed_form():
    # Beta(1,1) + 4/4 -> Beta(5,1), CDF x^5: lo = 0.05^(1/5), hi = 0.95^(1/5).
    post = beta_posterior(4, 4)
    assert post.mean == pytest.approx(5 / 6)
    assert post.lo == pytest.approx(0.05 ** 0.2)
    assert post.hi == pytest.approx(0.95 ** 0.2)


def test_symmetric_prior_and_data_give_symmetric_interval():
    # Beta(1,1) + 5/10 -> Beta(6,6), symmetric about 1/2, so lo + hi = 1.
    post = beta_posterior(5, 10, level=0.8)
    assert post.mean == 0.5
    assert post.lo + post.hi == pytest.approx(1.0)
    # Fractional successes (rewards in [0,1]): 1.5 of 3 -> Beta(2.5, 2.5), also symmetric.
    frac = beta_posterior(1.5, 3)
    assert (frac.alpha, frac.beta) == (2.5, 2.5)
    assert frac.lo + frac.hi == pytest.approx(1.0)


def test_jeffreys_prior_matches_arcsine_law():
    # Beta(1/2,1/2) has CDF (2/pi) asin(sqrt(x)), so its q-quantile is sin(pi q / 2)^2.
    post = beta_posterior(0, 0, BetaPrior(alpha=0.5, beta=0.5))
    assert post.lo == pytest.approx(math.sin(math.pi * 0.05 / 2) ** 2)
    assert post.hi == pytest.approx(math.sin(math.pi * 0.95 / 2) ** 2)


def test_higher_level_gives_wider_interval():
    narrow, wide = beta_posterior(3, 8, level=0.5), beta_posterior(3, 8, level=0.95)
    assert wide.lo < narrow.lo and narrow.hi < wide.hi


@pytest.mark.parametrize("successes,trials", [(5, 4), (-1, 4), (1, -1)])
def test_invalid_counts_rejected(successes, trials):
    with pytest.raises(ValueError):
        beta_posterior(successes, trials)


def test_invalid_level_and_prior_rejected():
    with pytest.raises(ValueError):
        beta_posterior(1, 2, level=1.0)
    with pytest.raises(ValidationError):
        BetaPrior(alpha=0.0)
    with pytest.raises(ValidationError, match="gamma"):
        BetaPrior(gamma=1.0)


@pytest.mark.parametrize(
    "p,bucket",
    [
        (0.0, "unsolved"),
        (0.02, "unsolved"),  # unsolved is p <= 0.02
        (0.021, "hard"),
        (0.1999, "hard"),
        (0.2, "learnable"),  # lower thresholds are inclusive
        (0.6999, "learnable"),
        (0.7, "easy"),
        (0.9499, "easy"),
        (0.95, "solved"),
        (1.0, "solved"),
    ],
)
def test_bucket_boundaries(p, bucket):
    assert assign_bucket(p) == bucket


def test_bucket_of_interval():
    assert bucket_of_interval(0.3, 0.6) == "learnable"
    assert bucket_of_interval(0.2, 0.6999) == "learnable"
    assert bucket_of_interval(0.3, 0.7) is None  # 0.7 already belongs to easy
    assert bucket_of_interval(0.95, 1.0) == "solved"
    assert bucket_of_interval(0.0, 0.02) == "unsolved"
    assert bucket_of_interval(0.01, 0.03) is None
    assert bucket_of_interval(0.5, 0.5) == "learnable"
    with pytest.raises(ValueError):
        bucket_of_interval(0.6, 0.3)


def test_custom_thresholds_and_validation():
    cfg = BucketConfig(unsolved_max=0.0, learnable_min=0.1, easy_min=0.5, solved_min=1.0)
    assert assign_bucket(0.0, cfg) == "unsolved"
    assert assign_bucket(0.05, cfg) == "hard"
    assert assign_bucket(0.99, cfg) == "easy"
    assert assign_bucket(1.0, cfg) == "solved"
    with pytest.raises(ValidationError):
        BucketConfig(easy_min=0.1)  # below learnable_min
    with pytest.raises(ValidationError, match="solved"):
        BucketConfig(solved=0.9)  # typo in a recipe names the field
    with pytest.raises(ValueError):
        assign_bucket(1.5)
