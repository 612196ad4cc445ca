"""Recipes: the whole configuration of a run, one pydantic model per stage.

A recipe is validated before anything runs; errors name the dotted field and the
allowed values. ``--set a.b=c`` overrides are applied to the raw YAML before validation
so they get the same checks.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.compression.config import CompressConfig
from components.data.config import CurateConfig
from components.difficulty.config import DifficultyStageConfig
from components.evaluation.config import EvaluateConfig
from components.models import ModelConfig
from components.rl.length import LengthScheduleConfig
from components.rl.losses import LossConfig
from components.rl.partial import PartialRolloutConfig
from components.rl.rollout_engine import RolloutVLLMConfig
from components.serving.config import DeployConfig

STAGES = ("curate", "estimate_difficulty", "rl_train", "compress", "evaluate", "deploy")


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the field at fault."""


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
    partial: PartialRolloutConfig = Field(default_factory=PartialRolloutConfig,
                                          description="APRIL partial rollouts (carry unfinished samples over)")
    lr: float = Field(1e-5, description="AdamW learning rate")
    weight_decay: float = Field(0.0, description="AdamW weight decay")
    warmup_steps: int = Field(0, description="linear learning-rate warm-up steps")
    epochs: int = Field(1, ge=1, description="optimisation passes over each rollout batch")
    minibatch_size: int = Field(16, ge=1, description="sequences per optimiser step")
    micro_batch_size: int = Field(16, ge=1, description="sequences per forward (grad accumulation)")
    grad_clip: float = Field(1.0, description="global gradient-norm clip")
    advantage: Literal["grpo", "drgrpo", "loo"] = Field(
        "grpo", description="group baseline: grpo (mean), drgrpo (mean, no std), loo (leave-one-out)")
    std_normalize: bool = Field(True, description="divide advantages by the group std")
    batch_normalize: bool = Field(False, description="normalise advantages over the whole batch")
    loss: LossConfig = Field(default_factory=LossConfig, description="policy loss: variant, clipping, KL, entropy")
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
    vllm: RolloutVLLMConfig = Field(default_factory=RolloutVLLMConfig, description="vLLM server for engine: vllm")
    seed: int = Field(0, description="sampling and shuffling seed")
    refresh: bool = Field(False, description="recompute this stage even when the cache has an entry")

    @model_validator(mode="after")
    def _partial_needs_tis(self) -> "RLConfig":
        # Carried-over prefixes were sampled by an older policy; with one epoch the old
        # log-probs equal the current ones, so TIS against the engine log-probs is the only
        # staleness correction.
        if self.partial.enabled and self.loss.tis_cap is None:
            raise ValueError("partial.enabled needs loss.tis_cap (importance correction for stale tokens)")
        if self.partial.enabled and self.engine != "transformers":
            raise ValueError("partial.enabled needs engine: transformers (it continues token prefixes in process)")
        return self


class Recipe(_Strict):
    name: str = Field("custom", description="recipe name (MLflow run names and tags)")
    description: str = Field("", description="free text")
    model: ModelConfig = Field(default_factory=ModelConfig, description="base policy")
    curate: CurateConfig = Field(description="data sources, dedup, decontamination, filters")
    estimate_difficulty: DifficultyStageConfig = Field(
        default_factory=DifficultyStageConfig, description="per-prompt pass rates and prompt selection")
    rl_train: RLConfig = Field(default_factory=RLConfig, description="GRPO-family training")
    compress: CompressConfig = Field(default_factory=CompressConfig, description="pruning / quantization variants")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="pass@k of every candidate and the gate")
    deploy: DeployConfig = Field(default_factory=DeployConfig, description="registry aliases and optional vLLM serving")

    def digest(self) -> str:
        return hashlib.sha256(canonical_json(self.model_dump(mode="json")).encode()).hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def builtin_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("components.recipes").iterdir() if p.name.endswith(".yaml"))


def _read_raw(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise RecipeError(f"recipe file not found: {path}")
        text = path.read_text()
    else:
        res = resources.files("components.recipes") / f"{name_or_path}.yaml"
        if not res.is_file():
            raise RecipeError(
                f"unknown recipe {name_or_path!r}: use a YAML path or one of {builtin_recipes()}"
            )
        text = res.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {name_or_path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {name_or_path} must be a mapping at the top level")
    return raw


def apply_override(raw: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict in place."""
    if "=" not in assignment:
        raise RecipeError(f"--set expects key=value, got {assignment!r}")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise RecipeError(f"--set {key}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = yaml.safe_load(value)


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(recipe)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"  {loc}: {msg}")
    return "invalid recipe:\n" + "\n".join(lines)


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    raw = _read_raw(name_or_path)
    for o in overrides or []:
        apply_override(raw, o)
    raw.setdefault("name", Path(name_or_path).stem)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e)) from None


def stage_config(recipe: Recipe, stage: str) -> dict:
    """The JSON-able config of one stage, as it enters the cache key (minus ``refresh``)."""
    cfg = getattr(recipe, stage).model_dump(mode="json")
    cfg.pop("refresh", None)
    return cfg
