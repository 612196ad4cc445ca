"""The rollout-engine contract shared by the transformers and vLLM engines.

Every engine returns, per sample, the token ids it produced, the log-prob of each
sampled token under the sampling distribution, the finish reason and the policy
version that produced each token, so the trainer can recompute log-probs and correct
for engine/trainer mismatch or stale (partial-rollout) tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "length"]


class SamplingParams(BaseModel):
    """Sampling settings; temperature 0 means greedy decoding."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(1.0, ge=0.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 = disabled")
    max_new_tokens: int = Field(32, ge=1)
    stop: list[str] = Field(default_factory=list, description="stop strings")
    seed: int | None = Field(None, description="prompt i of a call samples from its own generator, seeded "
                             "by seed + seed_offset + i (None: random)")
    seed_offset: int = Field(0, ge=0, description="index of the call's first prompt in a larger batch split "
                             "across workers, so a prompt's samples do not depend on the split")


@dataclass
class Sample:
    """One generated continuation of one prompt."""

    prompt_index: int
    sample_index: int
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: FinishReason
    versions: list[int] = field(default_factory=list)
    # Multi-turn episodes only (components.environments.episodes): 1 = a model token, 0 = a tool
    # output / template token (no gradient); the chat turns; the environment's reward and counts.
    loss_mask: list[int] | None = None
    turns: list[dict] | None = None
    reward: float | None = None
    episode: dict | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class GenerationBatch:
    """Samples for a batch of prompts, grouped: ``groups[i]`` holds prompt i's n samples."""

    prompt_token_ids: list[list[int]]
    groups: list[list[Sample]]
    seconds: float = 0.0

    @property
    def generated_tokens(self) -> int:
        return sum(s.num_tokens for g in self.groups for s in g)


Message = dict[str, str]


class RolloutEngine(Protocol):
    """What the trainer, difficulty estimator and evaluator need from an engine."""

    policy_version: int

    def generate(
        self, prompts: list[list[Message]], n: int, params: SamplingParams
    ) -> GenerationBatch:
        """Generate ``n`` samples for each chat-formatted prompt."""
        ...

    def update_weights(self, source: object, version: int) -> None:
        """Load new policy weights (a state dict, a model, or a checkpoint folder)."""
        ...

    def close(self) -> None:
        ...
