"""Difficulty buckets on the pass rate p.

Boundary semantics (defaults in brackets), chosen so every p in [0, 1] has exactly one bucket:

    unsolved   p <= unsolved_max                    [p <= 0.02]
    hard       unsolved_max < p < learnable_min      [0.02 < p < 0.2]
    learnable  learnable_min <= p < easy_min         [0.2 <= p < 0.7]
    easy       easy_min <= p < solved_min            [0.7 <= p < 0.95]
    solved     p >= solved_min                       [p >= 0.95]

Each bucket is an interval and the buckets are ordered, so an interval [lo, hi] lies wholly inside
one bucket exactly when lo and hi fall into the same bucket.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Ordered from hardest to easiest; tables and reports use this order.
BUCKETS: tuple[str, ...] = ("unsolved", "hard", "learnable", "easy", "solved")


class BucketConfig(BaseModel):
    """Pass-rate thresholds; see the module docstring for which side each boundary belongs to."""

    model_config = ConfigDict(extra="forbid")

    unsolved_max: float = Field(0.02, ge=0.0, le=1.0, description="pass rate at or below which a prompt is unsolved")
    learnable_min: float = Field(0.2, ge=0.0, le=1.0, description="pass rate from which a prompt is learnable")
    easy_min: float = Field(0.7, ge=0.0, le=1.0, description="pass rate from which a prompt is easy")
    solved_min: float = Field(0.95, ge=0.0, le=1.0, description="pass rate from which a prompt is solved")

    @model_validator(mode="after")
    def _ordered(self) -> "BucketConfig":
        if not self.unsolved_max < self.learnable_min < self.easy_min < self.solved_min:
            raise ValueError(
                "bucket thresholds must satisfy unsolved_max < learnable_min < easy_min < "
                f"solved_min, got {self.unsolved_max}, {self.learnable_min}, {self.easy_min}, "
                f"{self.solved_min}"
            )
        return self


def assign_bucket(p: float, cfg: BucketConfig | None = None) -> str:
    """The bucket of a pass rate p in [0, 1]."""
    cfg = cfg or BucketConfig()
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"pass rate must lie in [0, 1], got {p}")
    if p <= cfg.unsolved_max:
        return "unsolved"
    if p < cfg.learnable_min:
        return "hard"
    if p < cfg.easy_min:
        return "learnable"
    if p < cfg.solved_min:
        return "easy"
    return "solved"


def bucket_of_interval(lo: float, hi: float, cfg: BucketConfig | None = None) -> str | None:
    """The bucket that wholly contains [lo, hi], or None when the interval straddles a boundary."""
    if lo > hi:
        raise ValueError(f"interval lower end {lo} exceeds upper end {hi}")
    low = assign_bucket(lo, cfg)
    return low if low == assign_bucket(hi, cfg) else None
