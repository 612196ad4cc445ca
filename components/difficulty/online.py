"""Online difficulty during RL: a forgetting Beta tracker, Thompson prompt sampling, rollout budgets.

The policy changes every step, so old evidence about a prompt goes stale. `OnlineTracker.update`
shrinks a prompt's pseudo-counts toward the prior before adding the new group's evidence:

    alpha <- prior_alpha + decay * (alpha - prior_alpha) + successes
    beta  <- prior_beta  + decay * (beta  - prior_beta)  + (n - successes)

so evidence seen t updates ago weighs decay**t (an exponential moving window of about
1 / (1 - decay) updates), and with no evidence the posterior relaxes back to the prior. Only the
prompts present in an update decay: a prompt not sampled carries no new information about how far
its estimate has drifted, and decaying it would erase what the offline estimate established.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from components.difficulty.estimate import DifficultyRecord
from components.difficulty.posterior import BetaPrior, Posterior, check_level, posterior_from_params


class OnlineTracker:
    """Per-prompt Beta(alpha, beta) over the current policy's pass rate, keyed by prompt id."""

    def __init__(self, prior: BetaPrior | None = None, decay: float = 0.9, level: float = 0.9):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must lie in [0, 1], got {decay}")
        check_level(level)
        self.prior = prior or BetaPrior()
        self.decay = float(decay)
        self.level = float(level)
        self._counts: dict[str, list[float]] = {}

    @classmethod
    def from_records(
        cls,
        records: Iterable[DifficultyRecord],
        prior: BetaPrior | None = None,
        decay: float = 0.9,
        level: float = 0.9,
    ) -> "OnlineTracker":
        """Start from the offline estimate: its posteriors (prior included) become the state."""
        tracker = cls(prior=prior, decay=decay, level=level)
        for r in records:
            tracker._counts[r.id] = [float(r.alpha), float(r.beta)]
        return tracker

    def __contains__(self, prompt_id: str) -> bool:
        return prompt_id in self._counts

    def __len__(self) -> int:
        return len(self._counts)

    def params(self, prompt_id: str) -> tuple[float, float]:
        """(alpha, beta); an unseen prompt has the prior."""
        a, b = self._counts.get(prompt_id, (self.prior.alpha, self.prior.beta))
        return a, b

    def update(self, ids: Sequence[str], rewards: Sequence[Sequence[float] | float]) -> None:
        """Add one group of rewards in [0, 1] per id (a bare number counts as a group of one).

        A repeated id has its groups merged and decays once, so the result does not depend on
        how a step's rollouts were split into groups.
        """
        if len(ids) != len(rewards):
            raise ValueError(f"{len(ids)} ids but {len(rewards)} reward groups")
        evidence: dict[str, list[float]] = {}
        for pid, group in zip(ids, rewards):
            values = [float(group)] if isinstance(group, (int, float)) else [float(x) for x in group]
            if any(not 0.0 <= x <= 1.0 for x in values):  # also rejects NaN
                raise ValueError(f"rewards must lie in [0, 1]; prompt {pid!r} got {values}")
            s_n = evidence.setdefault(pid, [0.0, 0.0])
            s_n[0] += sum(values)
            s_n[1] += len(values)
        a0, b0, d = self.prior.alpha, self.prior.beta, self.decay
        for pid, (s, n) in evidence.items():
            a, b = self.params(pid)
            self._counts[pid] = [a0 + d * (a - a0) + s, b0 + d * (b - b0) + (n - s)]

    def posterior(self, prompt_id: str) -> Posterior:
        a, b = self.params(prompt_id)
        return posterior_from_params(a, b, self.level)

    def mean_pass_rate(self, ids: Sequence[str]) -> float:
        if not ids:
            raise ValueError("need at least one id")
        return float(np.mean([a / (a + b) for a, b in map(self.params, ids)]))

    def mean_difficulty(self, ids: Sequence[str]) -> float:
        """Average of 1 - E[p] over the ids (1 = the policy never solves them)."""
        return 1.0 - self.mean_pass_rate(ids)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable; floats survive json.dumps/loads exactly (repr round-trips)."""
        return {
            "prior": self.prior.model_dump(),
            "decay": self.decay,
            "level": self.level,
            "counts": {pid: list(ab) for pid, ab in self._counts.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prior = BetaPrior.model_validate(state["prior"])
        self.decay = float(state["decay"])
        self.level = float(state["level"])
        self._counts = {pid: [float(a), float(b)] for pid, (a, b) in state["counts"].items()}


def thompson_pick(tracker: OnlineTracker, candidate_ids: Sequence[str], k: int,
                  rng: np.random.Generator) -> list[str]:
    """Draw p ~ Beta per candidate and keep the k largest p(1 - p) (ties: candidate order)."""
    if not candidate_ids or k <= 0:
        return []
    ab = np.array([tracker.params(pid) for pid in candidate_ids])
    p = rng.beta(ab[:, 0], ab[:, 1])
    order = np.argsort(-(p * (1.0 - p)), kind="stable")
    return [candidate_ids[j] for j in order[:k]]


class ThompsonSampler:
    """Picks informative prompts: draw p ~ Beta per candidate, keep the k largest p(1 - p).

    Sampling p (rather than using the mean) explores prompts whose difficulty is uncertain.
    Deterministic given the seed, the tracker state and the call history; `state_dict` carries the
    tracker and the generator state so a restored run draws the same next batch.
    """

    def __init__(self, tracker: OnlineTracker, seed: int = 0):
        self.tracker = tracker
        self.seed = seed
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def sample_batch(self, candidate_ids: Sequence[str], k: int) -> list[str]:
        """k ids (all candidates when k exceeds them), most informative draw first."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if len(set(candidate_ids)) != len(candidate_ids):
            raise ValueError("candidate_ids must be unique")
        if not candidate_ids or k == 0:
            return []
        return thompson_pick(self.tracker, candidate_ids, k, self._rng)

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "rng": self._rng.bit_generator.state,
            "tracker": self.tracker.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self._rng = np.random.Generator(np.random.PCG64(self.seed))
        self._rng.bit_generator.state = state["rng"]
        self.tracker.load_state_dict(state["tracker"])


def _moments(a: float, b: float, n: int) -> tuple[float, float]:
    """(E[p^n], E[(1-p)^n]) under Beta(a, b): prod_{j<n} (a+j)/(a+b+j) and the same with b."""
    ep = eq = 1.0
    for j in range(n):
        ep *= (a + j) / (a + b + j)
        eq *= (b + j) / (a + b + j)
    return ep, eq


def _gain(a: float, b: float, n: int, ep: float, eq: float) -> float:
    """U(n+1) - U(n) = E[p^n q^2] + E[p q^(n+1)] with q = 1 - p, from ep = E[p^n], eq = E[q^n]."""
    s = a + b
    return ep * b * (b + 1) / ((s + n) * (s + n + 1)) + eq * (b + n) / (s + n) * a / (s + n + 1)


def _utility(a: float, b: float, n: int) -> float:
    """U(n) = E[q] - E[q p^n] - E[q^(n+1)]."""
    ep, eq = _moments(a, b, n)
    s = a + b
    return b / s - ep * b / (s + n) - eq * (b + n) / (s + n)


def allocate_rollouts(
    posteriors: Sequence[Posterior],
    total: int,
    min_per_prompt: int = 2,
    max_per_prompt: int | None = None,
) -> list[int]:
    """Split `total` rollouts across prompts, giving more to hard-but-solvable ones (DARS-style).

    Score: U(n) = E[(1 - p) * 1{a group of n rollouts has mixed rewards}] under the prompt's Beta
    posterior. Mixed groups are the only ones that give GRPO a gradient, and weighting them by the
    failure rate 1 - p puts the budget where there is most left to learn (an easy prompt's rare
    failure is worth less than a hard prompt's rare success). For a fixed p the gain
    (1-p)(p^n (1-p) + (1-p)^n p) shrinks as n grows, so U is concave for n >= 1 and handing out
    rollouts one at a time to the largest gain maximises the summed score. Mid and easy prompts
    saturate after a few rollouts, a hard prompt (small but non-zero p) keeps gaining for longer,
    and a confidently unsolved one (p near 0) gains little.

    Guarantees: the result never sums above `total`; every entry lies in [min, max]; the sum equals
    `total` whenever n*min <= total <= n*max. If total < n*min, floor(total / min) prompts (those
    with the highest U(min)) get rollouts and the rest get 0 (a group below min is useless); if
    total > n*max every prompt gets max. Ties go to the earlier prompt.
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    if min_per_prompt < 1:
        raise ValueError(f"min_per_prompt must be >= 1, got {min_per_prompt}")
    cap = math.inf if max_per_prompt is None else max_per_prompt
    if cap < min_per_prompt:
        raise ValueError(f"max_per_prompt ({max_per_prompt}) is below min_per_prompt ({min_per_prompt})")
    n_prompts = len(posteriors)
    alloc = [0] * n_prompts
    if n_prompts == 0:
        return alloc
    ab = [(p.alpha, p.beta) for p in posteriors]

    chosen: Sequence[int] = range(n_prompts)
    if total < n_prompts * min_per_prompt:
        score = [_utility(a, b, min_per_prompt) for a, b in ab]
        ranked = sorted(range(n_prompts), key=lambda i: (-score[i], i))
        chosen = sorted(ranked[: total // min_per_prompt])
    state: dict[int, tuple[float, float]] = {}  # E[p^n], E[q^n] at the current n
    for i in chosen:
        alloc[i] = min_per_prompt
        state[i] = _moments(*ab[i], min_per_prompt)
    remaining = total - min_per_prompt * len(chosen)

    def gain(i: int) -> float:
        return _gain(*ab[i], alloc[i], *state[i])

    heap = [(-gain(i), i) for i in chosen if alloc[i] < cap]
    heapq.heapify(heap)
    while remaining > 0 and heap:
        _, i = heapq.heappop(heap)
        a, b = ab[i]
        n = alloc[i]
        ep, eq = state[i]
        state[i] = (ep * (a + n) / (a + b + n), eq * (b + n) / (a + b + n))
        alloc[i] = n + 1
        remaining -= 1
        if alloc[i] < cap:
            heapq.heappush(heap, (-gain(i), i))
    return alloc
