"""Beta-Bernoulli posteriors over a prompt's pass rate.

A prompt's pass rate p under the policy is unknown; with a Beta(alpha, beta) prior and k successes
in n samples the posterior is Beta(alpha + k, beta + n - k). Rewards in [0, 1] count as fractional
successes (a pseudo-Bernoulli update), so partial-credit rewards need no special case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import beta as beta_dist


class BetaPrior(BaseModel):
    """Prior pseudo-counts; Beta(1, 1) is uniform over the pass rate."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(1.0, gt=0.0, description="prior successes (Beta alpha)")
    beta: float = Field(1.0, gt=0.0, description="prior failures (Beta beta)")


@dataclass(frozen=True)
class Posterior:
    """Beta(alpha, beta) with its mean and an equal-tailed credible interval [lo, hi]."""

    alpha: float
    beta: float
    mean: float
    lo: float
    hi: float


def check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")


def beta_interval(
    alpha: np.ndarray | float, beta: np.ndarray | float, level: float = 0.9
) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed credible interval, vectorised so a whole prompt pool costs one scipy call."""
    check_level(level)
    tail = (1.0 - level) / 2.0
    lo = beta_dist.ppf(tail, alpha, beta)
    hi = beta_dist.ppf(1.0 - tail, alpha, beta)
    return np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)


def posterior_from_params(alpha: float, beta: float, level: float = 0.9) -> Posterior:
    """Posterior summary for explicit Beta parameters (used by the online tracker)."""
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"Beta parameters must be positive, got alpha={alpha}, beta={beta}")
    lo, hi = beta_interval(alpha, beta, level)
    return Posterior(
        alpha=float(alpha),
        beta=float(beta),
        mean=float(alpha / (alpha + beta)),
        lo=float(lo),
        hi=float(hi),
    )


def beta_posterior(
    successes: float, trials: int, prior: BetaPrior | None = None, level: float = 0.9
) -> Posterior:
    """Posterior after `successes` (possibly fractional) out of `trials` samples."""
    prior = prior or BetaPrior()
    if trials < 0:
        raise ValueError(f"trials must be >= 0, got {trials}")
    if not 0.0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, trials={trials}], got {successes}")
    return posterior_from_params(prior.alpha + successes, prior.beta + trials - successes, level)
