"""The reward base class, its shared options and the safe-call limits every reward runs under.

Rewards run on untrusted model output inside the training loop, so every one of them:
- scans at most the last ``max_chars`` characters (a 1 MB completion costs the same as a short one),
- uses only linear-time parsing (:mod:`components.rewards.parsing`),
- is called through :func:`safe_call`, which turns any exception into ``score=0, error="exception"``
  and any call slower than ``time_limit_s`` into ``score=0, error="timeout"``. The time limit is
  measured, not interrupted: bounded inputs are what keeps a call short; the measurement catches
  the cases we did not foresee.

``RewardResult.error`` vocabulary: ``None`` (scored), ``"unparseable"`` (no answer could be read from
the completion), ``"invalid"`` (an answer was read but breaks the task's rules, e.g. a countdown
expression that reuses a number or calls a function), ``"exception"``, ``"timeout"``,
``"judge_failed"`` (the ``judge`` reward got no usable verdict: server down, HTTP error, no score).

A reward that grades the task text as well (``judge``) sets ``wants_prompt``; the scorer then puts the
row's prompt into ``meta["prompt"]`` (unless the row's meta already has one).

``version`` strings enter cache keys: bump one whenever that reward's semantics change.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from components.rewards.parsing import normalize_text, tail


@dataclass
class RewardResult:
    """One scored completion: total ``score``, named sub-scores in ``parts``, and an error kind."""

    score: float
    parts: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def safe_call(
    fn: Callable[[str, str, dict | None], RewardResult],
    completion: Any,
    answer: Any,
    meta: dict | None = None,
    time_limit_s: float = 1.0,
) -> RewardResult:
    """Call a raw scoring function so that it cannot raise and a slow call scores 0 ("timeout").

    Non-string inputs (``None``, ints from a dataset) are coerced to strings first.
    """
    start = time.perf_counter()
    try:
        completion = "" if completion is None else str(completion)
        answer = "" if answer is None else str(answer)
        result = fn(completion, answer, meta)
        if not isinstance(result, RewardResult):
            raise TypeError(f"reward returned {type(result).__name__}, not RewardResult")
        result = RewardResult(float(result.score), dict(result.parts), result.error)
    except Exception:  # noqa: BLE001 - a reward must never take the training loop down
        result = RewardResult(0.0, {}, "exception")
    if time.perf_counter() - start > time_limit_s:
        result = RewardResult(0.0, result.parts, "timeout")
    return result


class RewardConfig(BaseModel):
    """Options shared by every reward; subclasses add their own (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")
    max_chars: int = Field(default=4096, gt=0, description="only the tail of a completion is scanned")
    time_limit_s: float = Field(default=1.0, gt=0, description="calls slower than this score 0 (timeout)")


class RewardFn(ABC):
    """A verifiable reward. Call it; it returns a :class:`RewardResult` and never raises."""

    name: ClassVar[str]
    version: ClassVar[str]
    wants_prompt: ClassVar[bool] = False  # True: meta["prompt"] must hold the task text
    Config: ClassVar[type[RewardConfig]] = RewardConfig

    def __init__(self, config: RewardConfig | dict | None = None) -> None:
        if config is None:
            config = self.Config()
        elif isinstance(config, dict):
            config = self.Config(**config)
        self.config = config

    def __call__(self, completion: str, answer: str, meta: dict | None = None) -> RewardResult:
        return safe_call(self._score, completion, answer, meta, self.config.time_limit_s)

    @abstractmethod
    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        """The raw check; may raise (``__call__`` wraps it)."""

    def canonical_answer(self, answer: str) -> str | None:
        """Normalised reference answer, or None when this reward cannot read it."""
        text = str(answer).strip()
        return text or None

    def can_verify(self, answer: str, meta: dict | None = None) -> bool:
        """Whether this reward can check completions against ``answer`` (used to drop rows)."""
        try:
            return self.canonical_answer(answer) is not None
        except Exception:  # noqa: BLE001
            return False

    def spec(self) -> dict[str, Any]:
        """Name, version and options: what a cache key needs to know about this reward."""
        return {"name": self.name, "version": self.version, **self.config.model_dump()}

    def _text(self, completion: str) -> str:
        return normalize_text(tail(completion, self.config.max_chars))
