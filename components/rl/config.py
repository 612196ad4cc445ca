"""RL-stage configuration: the ``rl_train`` section of a recipe and its parts.

Composed by ``components.recipe.Recipe``; consumed by ``components.rl`` (collector, learner,
segment) and ``components.stages.rl``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from components.environments.base import EnvironmentSpec
from components.rl.advantages import ADVANTAGES, get_advantage
from components.rl.distributed import LearnerConfig
from components.rl.length import LengthScheduleConfig
from components.rl.losses import LossConfig
from components.rl.partial import PartialRolloutConfig
from components.rl.rollout_engine import RolloutVLLMConfig


def _registered_advantages(schema: dict[str, Any]) -> None:
    schema["enum"] = sorted(ADVANTAGES)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoRAConfig(_Strict):
    r: int = Field(16, description="adapter rank")
    alpha: int = Field(32, description="adapter scale numerator (scale = alpha / r)")
    dropout: float = Field(0.0, description="dropout on the adapter input")
    target_modules: list[str] = Field(
        description="linear layers that get adapters",
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]
    )


class OverlongConfig(_Strict):
    """DAPO soft overlong punishment: 0 up to max_len - buffer_len, then down to -penalty."""

    buffer_len: int = Field(4, ge=1, description="tokens before the length limit where the penalty ramps")
    penalty: float = Field(1.0, ge=0, description="reward subtracted at the length limit")


class RLConfig(_Strict):
    """GRPO-family training settings."""

    steps: int = Field(8, ge=0, description="RL steps (one rollout batch each)")
    segment_steps: int = Field(4, ge=1, description="steps per cached, resumable segment")
    prompts_per_step: int = Field(8, ge=1, description="prompts sampled per step")
    group_size: int = Field(8, ge=2, description="samples per prompt (G)")
    temperature: float = Field(1.0, gt=0, description="rollout sampling temperature")
    top_p: float = Field(1.0, description="rollout nucleus sampling")
    max_new_tokens: int = Field(32, ge=1, description="rollout length limit")
    length_schedule: LengthScheduleConfig | None = Field(
        None, description="max-new-tokens per step (constant/linear/cyclic); None = max_new_tokens")
    overlong: OverlongConfig | None = Field(None, description="DAPO soft overlong penalty; None = off")
    partial: PartialRolloutConfig = Field(default_factory=lambda: PartialRolloutConfig.model_validate({}),
                                          description="APRIL partial rollouts (carry unfinished samples over)")
    lr: float = Field(1e-5, description="AdamW learning rate")
    weight_decay: float = Field(0.0, description="AdamW weight decay")
    warmup_steps: int = Field(0, description="linear learning-rate warm-up steps")
    epochs: int = Field(1, ge=1, description="optimisation passes over each rollout batch")
    minibatch_size: int = Field(16, ge=1, description="sequences per optimiser step")
    micro_batch_size: int = Field(16, ge=1, description="sequences per forward (grad accumulation)")
    grad_clip: float = Field(1.0, description="global gradient-norm clip")
    advantage: str = Field(
        "grpo", json_schema_extra=_registered_advantages,
        description="group baseline (a registered estimator): grpo (mean), drgrpo (mean, no std), loo (leave-one-out)")
    std_normalize: bool = Field(True, description="divide advantages by the group std")
    batch_normalize: bool = Field(False, description="normalise advantages over the whole batch")
    loss: LossConfig = Field(default_factory=lambda: LossConfig.model_validate({}), description="policy loss: variant, clipping, KL, entropy")
    dynamic_sampling: bool = Field(False, description="DAPO: resample groups whose rewards are all equal")
    max_refill_rounds: int = Field(2, description="resampling rounds for dynamic_sampling")
    sampler: Literal["uniform", "thompson"] = Field(
        "uniform", description="prompt sampler: uniform, or Thompson sampling on the online pass-rate posterior")
    rollout_allocation: Literal["uniform", "dars"] = Field(
        "uniform", description="dars: split prompts_per_step*group_size rollouts by the online posterior")
    tracker_decay: float = Field(0.9, description="decay of the online per-prompt pass-rate tracker")
    logprob_chunk_size: int = Field(1024, description="tokens per chunk when computing log-probs (bounds logits memory)")
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")
    share_prompts: bool = Field(True, description="prefix-shared forward/backward: a group's prompt is forwarded "
                                "once for all its rollouts; micro-batches then hold whole groups")
    lora: LoRAConfig | None = Field(None, description="train LoRA adapters (peft) instead of all weights")
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="rollout engine: in-process transformers, or a vLLM server (make vllm) "
        "that reloads the policy's weights after every optimiser step")
    vllm: RolloutVLLMConfig = Field(default_factory=lambda: RolloutVLLMConfig.model_validate({}), description="vLLM server for engine: vllm")
    rollout_workers: int = Field(1, ge=1, description="rollout engine replicas: N > 1 runs N Ray actors, each "
                                 "sampling its share of a step's groups (same rollouts as N = 1)")
    rollout_threads: int = Field(1, ge=1, description="torch threads per rollout actor (rollout_workers > 1)")
    learner: LearnerConfig = Field(default_factory=lambda: LearnerConfig.model_validate({}),
                                   description="the learner's processes (torch.distributed world size)")
    ray_timeout_s: float = Field(900.0, gt=0, description="longest wait for a rollout or learner actor's answer; "
                                 "a dead or silent actor fails the segment")
    environment: EnvironmentSpec | None = Field(
        None, description="multi-turn rollouts through a registered environment (name + episode limits), "
        "rewarded by the environment; None = single-turn generation scored by the row's reward")
    seed: int = Field(0, description="sampling and shuffling seed")
    refresh: bool = Field(False, description="recompute this stage even when the cache has an entry")

    @field_validator("advantage")
    @classmethod
    def _known_advantage(cls, v: str) -> str:
        get_advantage(v)
        return v

    @model_validator(mode="after")
    def _partial_needs_tis(self) -> "RLConfig":
        # Carried-over prefixes were sampled by an older policy; with one epoch the old
        # log-probs equal the current ones, so TIS against the engine log-probs is the only
        # staleness correction.
        if self.partial.enabled and self.loss.tis_cap is None:
            raise ValueError("partial.enabled needs loss.tis_cap (importance correction for stale tokens)")
        if self.partial.enabled and self.engine != "transformers":
            raise ValueError("partial.enabled needs engine: transformers (it continues token prefixes in process)")
        if self.rollout_workers > 1 and (self.engine != "transformers" or self.partial.enabled):
            raise ValueError("rollout_workers > 1 needs engine: transformers and partial.enabled: false")
        if self.partial.enabled and self.environment is not None:
            raise ValueError("partial.enabled cannot be combined with environment (partial rollouts do not carry "
                             "episodes over yet): turn one of them off")
        if self.learner.sharding == "fsdp2" and self.lora is not None:
            raise ValueError("learner.sharding: fsdp2 cannot be combined with lora yet: use sharding: none for LoRA")
        return self
