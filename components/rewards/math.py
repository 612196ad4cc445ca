"""Math answers: LaTeX, fractions, intervals, sets and symbolic expressions, checked by math-verify.

math-verify's own timeout is SIGALRM (main thread only), so it is called with its timeouts off
(``parsing_timeout=None``, ``timeout_seconds=None``) inside a persistent child process
(:mod:`components.rewards.worker`) that is killed and replaced when a call passes ``timeout_s``;
inputs are capped before anything is parsed (sympy takes seconds on 1000 nested parentheses).
"""

from __future__ import annotations

from pydantic import Field

from components.rewards.base import RewardConfig, RewardFn, RewardResult
from components.rewards.parsing import bracket_depth, extract_math_answer, find_last_boxed, normalize_text, tail
from components.rewards.registry import register
from components.rewards.worker import WorkerError, WorkerTimeout, shared_pool

_TARGET = "components.rewards.math:verify_pair"


class MathConfig(RewardConfig):
    time_limit_s: float = Field(
        30.0, gt=0, description="measured limit of a whole call, a cold worker start included (timeout)")
    timeout_s: float = Field(5.0, gt=0, description="hard limit of one math-verify check; the worker is killed after it")
    max_answer_chars: int = Field(512, gt=0, description="longer extracted answers (either side) are not parsed")
    max_depth: int = Field(32, gt=0, description="answers nesting ( [ { deeper than this are not parsed")
    memory_mb: int = Field(2048, ge=256, description="address-space limit of the math-verify worker")
    workers: int = Field(1, ge=1, le=64, description="math-verify worker processes (calls from more threads wait)")


def _as_latex(text: str) -> str:
    """One math span for math-verify's LaTeX extractor (``$`` the model wrote is dropped)."""
    return "$" + text.strip().strip("$").strip() + "$"


def verify_pair(gold: str, pred: str) -> tuple[bool, bool, bool]:
    """(equivalent, gold parsed, prediction parsed): runs in the worker process, no timeouts of its own."""
    from math_verify import parse, verify

    g = parse(_as_latex(gold), parsing_timeout=None)  # type: ignore[arg-type]
    p = parse(_as_latex(pred), parsing_timeout=None)  # type: ignore[arg-type]
    if not g or not p:
        return False, bool(g), bool(p)
    return bool(verify(g, p, timeout_seconds=None)), True, True


@register
class MathReward(RewardFn):
    """1.0 when the completion's final answer is mathematically equivalent to the reference.

    The answer is the last balanced ``\\boxed{...}``, else the text after GSM8K's ``####``, else the
    ``Answer:`` line, else the last ``$...$`` span, else the last number
    (:func:`~components.rewards.parsing.extract_math_answer`). The reference is read the same way
    when it holds a ``\\boxed{}`` or ``####``, else taken whole. Equivalence is math-verify's
    ``verify`` (numbers to 6 decimals, ``\\frac{1}{2}`` = ``0.5``, intervals, sets, ``x^2-1`` =
    ``(x-1)(x+1)``). Errors: ``unparseable`` (no answer found, over ``max_answer_chars`` or
    ``max_depth``, or math-verify read nothing), ``invalid`` (the reference cannot be read),
    ``timeout`` (the check passed ``timeout_s`` and its worker was killed), ``exception``.
    """

    name = "math"
    version = "1"
    Config = MathConfig
    config: MathConfig

    def _fits(self, text: str) -> bool:
        return len(text) <= self.config.max_answer_chars and bracket_depth(text) <= self.config.max_depth

    def _reference(self, answer: str) -> str | None:
        text = normalize_text(tail(str(answer), self.config.max_chars)).strip()
        if find_last_boxed(text) is not None or "####" in text:
            text = extract_math_answer(text)[0] or ""
        return text if text and self._fits(text) else None

    def canonical_answer(self, answer: str) -> str | None:
        return self._reference(answer)

    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        ref = self._reference(answer)
        if ref is None:
            return RewardResult(0.0, {}, "invalid")
        pred, rule = extract_math_answer(self._text(completion))
        if pred is None or not self._fits(pred):
            return RewardResult(0.0, {"found": 0.0}, "unparseable")
        pool = shared_pool(_TARGET, self.config.workers, self.config.memory_mb)
        try:
            ok, gold_read, pred_read = pool.call(ref, pred, timeout_s=self.config.timeout_s)
        except WorkerTimeout:
            return RewardResult(0.0, {"found": 1.0}, "timeout")
        except WorkerError:
            return RewardResult(0.0, {"found": 1.0}, "exception")
        if not gold_read:
            return RewardResult(0.0, {"found": 1.0}, "invalid")
        if not pred_read:
            return RewardResult(0.0, {"found": 0.0}, "unparseable")
        return RewardResult(float(ok), {"found": 1.0, "boxed": float(rule == "boxed")})
