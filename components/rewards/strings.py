"""String answers: ``exact`` (character for character) and ``normalized_string`` (case,
punctuation and spacing ignored)."""

from __future__ import annotations

from components.rewards.base import RewardFn, RewardResult
from components.rewards.parsing import extract_final_answer, normalize_string, tail
from components.rewards.registry import register


@register
class ExactReward(RewardFn):
    """1.0 when the stated final answer (boxed, else ``Answer:`` line, else the whole stripped
    completion) equals the stripped reference character for character. No normalisation at all."""

    name = "exact"
    version = "1"

    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        ref = answer.strip()
        if not ref:
            return RewardResult(0.0, {}, "invalid")
        stated = extract_final_answer(tail(completion, self.config.max_chars))
        pred = (stated if stated is not None else completion).strip()
        return RewardResult(float(pred == ref), {"marked": float(stated is not None)})

@register
class NormalizedStringReward(RewardFn):
    """Like ``exact`` but both sides pass through :func:`normalize_string` first
    (so "Paris." == "paris" and "U.S.A" == "usa")."""

    name = "normalized_string"
    version = "1"

    def canonical_answer(self, answer: str) -> str | None:
        return normalize_string(tail(str(answer), self.config.max_chars)) or None

    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        ref = self.canonical_answer(answer)
        if ref is None:
            return RewardResult(0.0, {}, "invalid")
        text = tail(completion, self.config.max_chars)
        stated = extract_final_answer(text)
        pred = normalize_string(stated if stated is not None else text)
        if not pred:
            return RewardResult(0.0, {"marked": 0.0}, "unparseable")
        return RewardResult(float(pred == ref), {"marked": float(stated is not None)})
