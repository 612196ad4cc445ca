"""Replayable reward sources for tests, benchmarks and the smoke recipe (no model involved).

Both keep one stream per prompt, so the j-th reward of a prompt does not depend on how requests
are split into rounds: a sequential run sees a prefix of what a fixed-k run sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class PatternRewards:
    """Prompt i's j-th reward is patterns[i][j % len(patterns[i])]: fully deterministic."""

    def __init__(self, patterns: Sequence[Sequence[float]]):
        if any(len(p) == 0 for p in patterns):
            raise ValueError("every pattern needs at least one reward")
        self.patterns = [list(map(float, p)) for p in patterns]
        self.drawn = [0] * len(self.patterns)
        self.calls: list[tuple[list[int], int, int]] = []  # (indices, n, round) for assertions

    def __call__(self, indices: list[int], n: int, round_index: int) -> list[list[float]]:
        self.calls.append((list(indices), n, round_index))
        out = []
        for i in indices:
            pat, start = self.patterns[i], self.drawn[i]
            out.append([pat[(start + j) % len(pat)] for j in range(n)])
            self.drawn[i] += n
        return out


class BernoulliRewards:
    """Bernoulli(true_p[i]) rewards from a per-prompt generator seeded by (seed, i)."""

    def __init__(self, true_p: Sequence[float], seed: int = 0):
        if any(not 0.0 <= p <= 1.0 for p in true_p):
            raise ValueError("true pass rates must lie in [0, 1]")
        self.true_p = [float(p) for p in true_p]
        self.seed = seed
        self._rngs: dict[int, np.random.Generator] = {}

    def __call__(self, indices: list[int], n: int, round_index: int) -> list[list[float]]:
        out = []
        for i in indices:
            rng = self._rngs.setdefault(i, np.random.default_rng([self.seed, i]))
            out.append((rng.random(n) < self.true_p[i]).astype(float).tolist())
        return out
