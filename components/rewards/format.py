"""Format reward: an explicit final answer at the end of a short completion, whatever its value."""

from __future__ import annotations

import re

from pydantic import Field

from components.rewards.base import RewardConfig, RewardFn, RewardResult
from components.rewards.parsing import ANSWER_RE, find_last_boxed, last_match, tail
from components.rewards.registry import register


class FormatConfig(RewardConfig):
    max_len: int = Field(2048, gt=0, description="completions longer than this are not 'short'")
    trailing_chars: int = Field(64, ge=0, description="non-space text allowed after the answer")


_ANSWER_TAG_RE = re.compile(r"<answer>[^<]{1,512}</answer>")


@register
class FormatReward(RewardFn):
    """Format reward, independent of correctness (``answer`` is ignored).

    ``score = has_answer * at_end * short`` (each 0/1, reported in ``parts``):
    - has_answer: an explicit, non-empty final answer exists: ``\\boxed{...}``, an ``Answer: ...``
      line, or ``<answer>...</answer>``;
    - at_end: at most ``trailing_chars`` non-space characters follow that answer;
    - short: the whole completion has at most ``max_len`` characters.
    """

    name = "format"
    version = "1"
    Config = FormatConfig
    config: FormatConfig

    def can_verify(self, answer: str, meta: dict | None = None) -> bool:
        return True

    def canonical_answer(self, answer: str) -> str | None:
        return str(answer).strip()

    def _answer_end(self, text: str) -> int | None:
        """Index just after the last explicit final answer in ``text``, or None."""
        ends: list[int] = []
        start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
        if start >= 0:
            content = find_last_boxed(text)
            if content is not None and content.strip():
                ends.append(text.index("{", start) + 1 + len(content) + 1)
        last = last_match(ANSWER_RE, text)
        if last is not None:
            rest = text[last.end():]
            nl = rest.find("\n")
            line = rest if nl < 0 else rest[:nl]
            if line.strip():
                ends.append(last.end() + len(line))
        tag = last_match(_ANSWER_TAG_RE, text)
        if tag is not None and tag.group(0)[8:-9].strip():
            ends.append(tag.end())
        return max(ends) if ends else None

    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        short = len(completion) <= self.config.max_len
        text = tail(completion, self.config.max_chars)
        end = self._answer_end(text)
        has = end is not None
        at_end = has and len("".join(text[end:].split())) <= self.config.trailing_chars
        parts = {"has_answer": float(has), "at_end": float(at_end), "short": float(short)}
        return RewardResult(float(has and at_end and short), parts)
