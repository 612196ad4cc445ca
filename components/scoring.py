"""Score completions with each row's task reward (RL, difficulty estimate, evaluation).

Uses only the public reward API: ``get_reward(task)`` gives a callable
``(text, answer, meta) -> RewardResult``.
"""

from __future__ import annotations

from typing import Any, Callable

from components.prompts import row_meta
from components.rewards import get_reward


class RewardScorer:
    """Scores completions with each row's task reward; counts errors/timeouts by kind."""

    def __init__(self) -> None:
        self._fns: dict[str, Callable[..., Any]] = {}
        self.errors: dict[str, int] = {}

    def __call__(self, row: dict[str, Any], text: str) -> float:
        task = row.get("task") or "numeric"
        fn = self._fns.get(task)
        if fn is None:
            fn = self._fns[task] = get_reward(task)
        meta = row_meta(row)
        if getattr(fn, "wants_prompt", False) and "prompt" not in meta:
            meta = {**meta, "prompt": row.get("prompt") or ""}  # the judge grades the task too
        res = fn(text, row["answer"], meta)
        if res.error:
            self.errors[res.error] = self.errors.get(res.error, 0) + 1
        return float(res.score)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())
