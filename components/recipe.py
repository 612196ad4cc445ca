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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.compression.config import VariantConfig, parse_variant
from components.data.config import CurateConfig
from components.difficulty.estimate import EstimateConfig
from components.difficulty.selection import SelectionConfig
from components.evaluation.gate import GateConfig
from components.evaluation.runner import EvalConfig
from components.rl.length import LengthScheduleConfig
from components.rl.losses import LossConfig
from components.rl.partial import PartialRolloutConfig

STAGES = ("curate", "estimate_difficulty", "rl_train", "compress", "evaluate", "deploy")


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the field at fault."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TinyModelConfig(_Strict):
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128


class ModelConfig(_Strict):
    """Which base policy to start from."""

    source: str = Field(
        "embedded:smollm2",
        description="embedded:smollm2 | tiny-random | a local checkpoint folder | a hub id",
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: float32 on CPU (no native bf16), bfloat16 on CUDA"
    )
    refresh: bool = False


class DifficultyStageConfig(EstimateConfig):
    """Offline estimate settings plus the selection policy applied when RL samples prompts.

    The estimate's cache key covers only what changes the estimate (sampling settings,
    prior, buckets), so recipes that differ elsewhere reuse it.
    """

    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    batch_prompts: int = Field(32, ge=1, description="prompts per generation call")
    enabled: bool = True
    refresh: bool = False


class LoRAConfig(_Strict):
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]
    )


class OverlongConfig(_Strict):
    """DAPO soft overlong punishment: 0 up to max_len - buffer_len, then down to -penalty."""

    buffer_len: int = Field(4, ge=1)
    penalty: float = Field(1.0, ge=0)


class RLConfig(_Strict):
    """GRPO-family training settings."""

    steps: int = Field(8, ge=0)
    segment_steps: int = Field(4, ge=1, description="steps per cached, resumable segment")
    prompts_per_step: int = Field(8, ge=1)
    group_size: int = Field(8, ge=2, description="samples per prompt (G)")
    temperature: float = Field(1.0, gt=0)
    top_p: float = 1.0
    max_new_tokens: int = Field(32, ge=1)
    length_schedule: LengthScheduleConfig | None = Field(
        None, description="max-new-tokens per step (constant/linear/cyclic); None = max_new_tokens")
    overlong: OverlongConfig | None = None
    partial: PartialRolloutConfig = Field(default_factory=PartialRolloutConfig)
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    epochs: int = Field(1, ge=1, description="optimisation passes over each rollout batch")
    minibatch_size: int = Field(16, ge=1, description="sequences per optimiser step")
    micro_batch_size: int = Field(16, ge=1, description="sequences per forward (grad accumulation)")
    grad_clip: float = 1.0
    advantage: Literal["grpo", "drgrpo", "loo"] = "grpo"
    std_normalize: bool = True
    batch_normalize: bool = False
    loss: LossConfig = Field(default_factory=LossConfig)
    dynamic_sampling: bool = False
    max_refill_rounds: int = 2
    sampler: Literal["uniform", "thompson"] = "uniform"
    rollout_allocation: Literal["uniform", "dars"] = Field(
        "uniform", description="dars: split prompts_per_step*group_size rollouts by the online posterior")
    tracker_decay: float = 0.9
    logprob_chunk_size: int = 1024
    gradient_checkpointing: bool = False
    lora: LoRAConfig | None = Field(None, description="train LoRA adapters (peft) instead of all weights")
    seed: int = 0
    refresh: bool = False

    @model_validator(mode="after")
    def _partial_needs_tis(self) -> "RLConfig":
        # Carried-over prefixes were sampled by an older policy; with one epoch the old
        # log-probs equal the current ones, so TIS against the engine log-probs is the only
        # staleness correction.
        if self.partial.enabled and self.loss.tis_cap is None:
            raise ValueError("partial.enabled needs loss.tis_cap (importance correction for stale tokens)")
        return self


class CompressConfig(_Strict):
    variants: list[VariantConfig] = Field(default_factory=list)
    calibration_samples: int = Field(64, ge=1)
    calibration_seq_len: int = Field(64, ge=8)
    refresh: bool = False

    @field_validator("variants", mode="before")
    @classmethod
    def _parse_short(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [parse_variant(x) if isinstance(x, str) else x for x in v]
        return v


class EvaluateConfig(EvalConfig):
    gate: GateConfig = Field(default_factory=GateConfig)


class DeployConfig(_Strict):
    registered_model_name: str = "posttrain-policy"
    serve: bool = Field(False, description="start a vLLM server for the champion (needs make vllm)")
    port: int = 8100
    refresh: bool = False


class Recipe(_Strict):
    name: str = "custom"
    description: str = ""
    model: ModelConfig = Field(default_factory=ModelConfig)
    curate: CurateConfig
    estimate_difficulty: DifficultyStageConfig = Field(default_factory=DifficultyStageConfig)
    rl_train: RLConfig = Field(default_factory=RLConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)

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
