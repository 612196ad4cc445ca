"""Composite reward: a weighted sum of other registered rewards."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import Field

from components.rewards.base import RewardConfig, RewardFn, RewardResult
from components.rewards.registry import get_reward, register


class CompositeConfig(RewardConfig):
    components: list[dict[str, Any] | str] = Field(
        min_length=1,
        description='e.g. [{"name": "numeric", "weight": 1.0}, {"name": "format", "weight": 0.1}]',
    )


@register
class CompositeReward(RewardFn):
    """Weighted sum of other rewards. ``parts`` holds each component's score under its name
    (``name#i`` when a name repeats); ``error`` is the first component error, in order.
    Each component runs through its own :func:`safe_call`, so one failing part does not zero the rest.
    """

    name = "composite"
    Config = CompositeConfig
    config: CompositeConfig

    def __init__(self, config: RewardConfig | dict | None = None) -> None:
        super().__init__(config)
        self.children: list[tuple[str, float, RewardFn]] = []
        seen: Counter[str] = Counter()
        for i, comp in enumerate(self.config.components):
            spec = {"name": comp} if isinstance(comp, str) else dict(comp)
            weight = float(spec.pop("weight", 1.0))
            child = get_reward(spec)
            seen[child.name] += 1
            key = child.name if seen[child.name] == 1 else f"{child.name}#{i}"
            self.children.append((key, weight, child))

    @property
    def version(self) -> str:  # type: ignore[override]
        """Changes whenever any component's version changes (cache keys follow)."""
        return "1(" + ",".join(f"{c.name}:{c.version}" for _, _, c in self.children) + ")"

    @property
    def wants_prompt(self) -> bool:  # type: ignore[override]
        return any(c.wants_prompt for _, _, c in self.children)

    def spec(self) -> dict[str, Any]:
        options = self.config.model_dump(exclude={"components"})
        children = [{"weight": w, **c.spec()} for _, w, c in self.children]
        return {"name": self.name, "version": self.version, **options, "components": children}

    def canonical_answer(self, answer: str) -> str | None:
        return self.children[0][2].canonical_answer(answer)

    def can_verify(self, answer: str, meta: dict | None = None) -> bool:
        return all(c.can_verify(answer, meta) for _, w, c in self.children if w != 0)

    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        total, parts, error = 0.0, {}, None
        for key, weight, child in self.children:
            res = child(completion, answer, meta)
            parts[key] = res.score
            total += weight * res.score
            if error is None and res.error is not None:
                error = res.error
        return RewardResult(total, parts, error)
