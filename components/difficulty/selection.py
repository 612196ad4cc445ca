"""Pick the prompts worth spending RL compute on, from offline difficulty records.

A GRPO group carries signal only when its rewards differ, which happens with probability rising
in p(1 - p); solved prompts are dropped (no signal, the policy already knows them) and only a
small seeded share of unsolved ones is kept (they may become learnable as the policy improves).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from components.difficulty.estimate import DifficultyRecord


class SelectionConfig(BaseModel):
    """`order`: "none" keeps input order with uniform weights, "easy_to_hard" sorts by descending
    posterior mean with uniform weights, "weighted" keeps input order with weights ∝ p(1 - p)."""

    model_config = ConfigDict(extra="forbid")

    drop_solved: bool = Field(True, description="leave out prompts the base model already solves")
    keep_unsolved_fraction: float = Field(0.1, ge=0.0, le=1.0, description="share of unsolved prompts kept")
    order: Literal["none", "easy_to_hard", "weighted"] = Field(
        "weighted", description="none, easy_to_hard (curriculum) or weighted (sample by learnability)")
    seed: int = Field(0, description="selection seed")


@dataclass(frozen=True)
class Selected:
    id: str
    weight: float  # sampling weight; the weights of one selection sum to 1


def _kept_unsolved(records: Sequence[DifficultyRecord], cfg: SelectionConfig) -> set[str]:
    """round-half-up(fraction * n) unsolved ids, drawn by a seeded permutation of the sorted ids
    so the choice is independent of input order."""
    ids = sorted(r.id for r in records if r.bucket == "unsolved")
    k = math.floor(cfg.keep_unsolved_fraction * len(ids) + 0.5)
    perm = np.random.default_rng(cfg.seed).permutation(len(ids))
    return {ids[j] for j in perm[:k]}


def select_prompts(
    records: Sequence[DifficultyRecord], cfg: SelectionConfig | None = None
) -> list[Selected]:
    """Deterministic selection: same records and config give the same list."""
    cfg = cfg or SelectionConfig()
    unsolved = _kept_unsolved(records, cfg)
    kept = [
        r
        for r in records
        if not (cfg.drop_solved and r.bucket == "solved")
        and (r.bucket != "unsolved" or r.id in unsolved)
    ]
    if not kept:
        return []
    if cfg.order == "easy_to_hard":
        kept = sorted(kept, key=lambda r: (-r.mean, r.id))
    if cfg.order == "weighted":
        raw = np.array([r.mean * (1.0 - r.mean) for r in kept])
        total = raw.sum()
        # Posterior means lie strictly inside (0, 1) for a proper prior, so total > 0; guard anyway.
        weights = raw / total if total > 0 else np.full(len(kept), 1.0 / len(kept))
    else:
        weights = np.full(len(kept), 1.0 / len(kept))
    return [Selected(id=r.id, weight=float(w)) for r, w in zip(kept, weights)]
