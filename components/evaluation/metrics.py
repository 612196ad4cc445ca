"""Pure evaluation figures: pass@k, flips against a champion, cost of a pass, determinism, Pareto.

Kept free of engines and I/O so every number can be checked by hand in unit tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict


class FlipCounts(BaseModel):
    """Per-prompt changes between a champion and a candidate on the prompts both answered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    negative: int  # champion right, candidate wrong: the regressions an average hides
    positive: int  # champion wrong, candidate right
    shared: int  # prompt ids present in both


class DeterminismReport(BaseModel):
    """Whether two runs of the same greedy pass produced the same texts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    identical: bool
    mismatches: int
    first_mismatch: int | None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, Codex).

    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i) so no
    factorial ever overflows or loses precision.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def flips(champion: Mapping[str, bool], candidate: Mapping[str, bool]) -> FlipCounts:
    """Count negative/positive flips on the prompt ids both reports share."""
    shared = champion.keys() & candidate.keys()
    negative = sum(1 for i in shared if champion[i] and not candidate[i])
    positive = sum(1 for i in shared if not champion[i] and candidate[i])
    return FlipCounts(negative=negative, positive=positive, shared=len(shared))


def cost_of_pass(total_output_tokens: int, correct: int) -> float:
    """Generated tokens spent per correct answer; inf when nothing was correct."""
    if total_output_tokens < 0 or correct < 0:
        raise ValueError("token and correct counts must be non-negative")
    if correct == 0:
        return math.inf
    return total_output_tokens / correct


def determinism(a: Sequence[str], b: Sequence[str]) -> DeterminismReport:
    """Compare two passes position by position; a length difference counts as mismatches."""
    mismatches = sum(1 for x, y in zip(a, b, strict=False) if x != y) + abs(len(a) - len(b))
    first: int | None = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if first is None and len(a) != len(b):
        first = min(len(a), len(b))
    return DeterminismReport(identical=mismatches == 0, mismatches=mismatches, first_mismatch=first)


def pareto_frontier(points: Sequence[tuple[str, float, int | float | None]]) -> list[str]:
    """Names of the (name, accuracy, size) points no other point beats on both axes.

    Higher accuracy and smaller size are better; an unknown size counts as infinitely large, so it
    is on the frontier only when nothing reaches its accuracy. Returned smallest size first.
    """

    def size_of(p: tuple[str, float, int | float | None]) -> float:
        return math.inf if p[2] is None else float(p[2])

    frontier = []
    for p in points:
        dominated = any(
            q[1] >= p[1]
            and size_of(q) <= size_of(p)
            and (q[1] > p[1] or size_of(q) < size_of(p))
            for q in points
        )
        if not dominated:
            frontier.append(p)
    frontier.sort(key=lambda p: (size_of(p), -p[1], p[0]))
    return [p[0] for p in frontier]
