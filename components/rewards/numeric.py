"""Numeric answers: equal as exact numbers (``0.75`` = ``3/4`` = ``7.5e-1``)."""

from __future__ import annotations

from fractions import Fraction

from pydantic import Field

from components.rewards.base import RewardConfig, RewardFn, RewardResult
from components.rewards.parsing import extract_number, format_fraction, normalize_text, tail
from components.rewards.registry import register


class NumericConfig(RewardConfig):
    rel_tol: float = Field(0.0, ge=0, allow_inf_nan=False,
                           description="credit |answer - ref| <= abs_tol + rel_tol * |ref| (default: equal)")
    abs_tol: float = Field(0.0, ge=0, allow_inf_nan=False)
    max_digits: int = Field(1000, gt=0, description="longer numbers (digits or exponent) are unreadable")


@register
class NumericReward(RewardFn):
    """1.0 when the model's number equals the reference as a number (``0.75`` = ``3/4`` =
    ``7.5e-1``); ``abs_tol``/``rel_tol`` (finite, 0 by default) widen that on request.

    Comparison is on exact rationals, so 1000-digit integers and exponents compare without float
    overflow: there is no inf or nan, and "1e309" is 10^309, never 309. A reference like
    ``"#### 72"`` (GSM8K) is read after the ``####``.
    """

    name = "numeric"
    version = "2"  # 2: exponents, one thousands-separator rule, exact equality by default
    Config = NumericConfig
    config: NumericConfig

    def _reference(self, answer: str) -> Fraction | None:
        text = normalize_text(tail(str(answer), self.config.max_chars))
        if "####" in text:
            text = text.rsplit("####", 1)[1]
        value, _ = extract_number(text, self.config.max_digits)
        return value

    def canonical_answer(self, answer: str) -> str | None:
        value = self._reference(answer)
        return None if value is None else format_fraction(value)

    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        ref = self._reference(answer)
        if ref is None:
            return RewardResult(0.0, {}, "invalid")  # reference unreadable: curation should drop it
        pred, rule = extract_number(self._text(completion), self.config.max_digits)
        if pred is None:
            return RewardResult(0.0, {"found": 0.0}, "unparseable")
        tol = Fraction(self.config.abs_tol) + Fraction(self.config.rel_tol) * abs(ref)
        ok = abs(pred - ref) <= tol
        return RewardResult(float(ok), {"found": 1.0, "boxed": float(rule == "boxed")})
