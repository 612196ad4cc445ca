"""Response-length control: generation-budget schedules and DAPO's soft overlong penalty.

Why: a fixed budget either truncates long reasoning (noisy rewards) or wastes rollout time
on rambling. A schedule grows the budget (linear) or alternates short and long phases
(SIRI-style cyclic compression/expansion); the soft penalty discourages answers that run
into the budget without the cliff of a hard truncation reward.
"""

from __future__ import annotations

import math
from typing import Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.engines.base import Sample


class LengthScheduleConfig(BaseModel):
    """``max_new_tokens`` as a function of the RL step.

    constant: ``start`` always. linear: ``start`` at step 0 to ``end`` at step ``period``,
    then ``end``. cyclic: in each ``period`` steps, the first ``ceil(period/2)`` use
    ``start`` (the short, compressing phase) and the rest ``end`` (the long phase).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["constant", "linear", "cyclic"] = Field("constant", description="constant, linear or cyclic")
    start: int = Field(32, ge=1, description="max new tokens at step 0")
    end: int = Field(32, ge=1, description="max new tokens at the end of the ramp / cycle")
    period: int = Field(1, ge=1, description="ramp steps (linear) or cycle length (cyclic)")

    @model_validator(mode="after")
    def _cyclic_needs_two_phases(self) -> "LengthScheduleConfig":
        if self.kind == "cyclic" and self.period < 2:
            raise ValueError("period: a cyclic schedule needs period >= 2 (one short and one long step)")
        return self


def max_new_tokens_at(step: int, cfg: LengthScheduleConfig) -> int:
    """The generation budget for ``step`` (0-based)."""
    if step < 0:
        raise ValueError("step must be >= 0")
    if cfg.kind == "constant":
        return cfg.start
    if cfg.kind == "linear":
        frac = min(step, cfg.period) / cfg.period
        return int(math.floor(cfg.start + (cfg.end - cfg.start) * frac + 0.5))
    short_steps = math.ceil(cfg.period / 2)
    return cfg.start if step % cfg.period < short_steps else cfg.end


def overlong_penalty(lengths: Iterable[int], max_len: int, buffer_len: int, penalty: float = 1.0) -> list[float]:
    """DAPO soft overlong punishment, added to the task reward.

    0 for ``L <= max_len - buffer_len``; then linear, ``-penalty * (L - (max_len - buffer_len)) / buffer_len``,
    reaching ``-penalty`` at ``L = max_len``; ``-penalty`` beyond. ``buffer_len = 0`` is a hard cliff.
    """
    if buffer_len < 0 or buffer_len > max_len:
        raise ValueError("buffer_len must be in [0, max_len]")
    free = max_len - buffer_len
    out = []
    for n in lengths:
        if n <= free:
            out.append(0.0)
        elif n >= max_len:
            out.append(-float(penalty))
        else:
            out.append(-float(penalty) * (n - free) / buffer_len)
    return out


def flag_truncated(samples: Iterable[Sample]) -> list[bool]:
    """True for samples cut by the budget (DAPO overlong filtering masks these from the loss)."""
    return [s.finish_reason == "length" for s in samples]
