"""Multiple-choice answers: the chosen letter against the reference letter."""

from __future__ import annotations

import re

from pydantic import Field

from components.rewards.base import RewardConfig, RewardFn, RewardResult
from components.rewards.parsing import clean_latex, find_last_boxed, last_match, normalize_text
from components.rewards.registry import register


class MultipleChoiceConfig(RewardConfig):
    letters: str = Field("ABCDE", min_length=2, pattern=r"^[A-Z]+$")


@register
class MultipleChoiceReward(RewardFn):
    """1.0 when the chosen letter equals the reference letter.

    The letter is read, in order, from: ``\\boxed{B}``; the last ``Answer: B`` / ``answer is (B)``;
    the last ``(B)`` / ``[B]``; a completion that is just ``B`` / ``B.`` / ``(B)``. Letters must be
    upper case (so the article "a" is not read as choice A).
    """

    name = "multiple_choice"
    version = "1"
    Config = MultipleChoiceConfig
    config: MultipleChoiceConfig

    def __init__(self, config: RewardConfig | dict | None = None) -> None:
        super().__init__(config)
        L = re.escape(self.config.letters)
        # One run of blanks before and one after the optional colon, never two adjacent
        # runs of the same class (that would backtrack quadratically on a long blank run).
        self._answer_re = re.compile(
            r"(?i:answer)(?:[ \t]+(?i:is))?[ \t*]*(?:[:\uff1a][ \t*]*)?[(\[]?([" + L + r"])(?![A-Za-z])"
        )
        self._paren_re = re.compile(r"[(\[]([" + L + r"])[)\]]")
        self._alone_re = re.compile(r"[(\[]?([" + L + r"])[)\].:]?")

    def _letter(self, text: str) -> str | None:
        boxed = find_last_boxed(text)
        if boxed is not None:
            m = self._alone_re.fullmatch(clean_latex(boxed).replace("}", "").strip())
            if m:
                return m.group(1)
        for regex in (self._answer_re, self._paren_re):
            last = last_match(regex, text)
            if last is not None:
                return last.group(1)
        m = self._alone_re.fullmatch(text.strip())
        return m.group(1) if m else None

    def canonical_answer(self, answer: str) -> str | None:
        text = normalize_text(str(answer)).strip()
        if len(text) > 8:
            return None
        m = self._alone_re.fullmatch(text.upper())
        return m.group(1) if m else None

    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        ref = self.canonical_answer(answer)
        if ref is None:
            return RewardResult(0.0, {}, "invalid")
        pred = self._letter(self._text(completion))
        if pred is None:
            return RewardResult(0.0, {"found": 0.0}, "unparseable")
        return RewardResult(float(pred == ref), {"found": 1.0})
