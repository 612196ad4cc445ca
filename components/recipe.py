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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from components.compression.config import VariantConfig, parse_variant
from components.data.config import CurateConfig
from components.difficulty.estimate import EstimateConfig
from components.difficulty.selection import SelectionConfig
from components.evaluation.gate import GateConfig
from components.evaluation.runner import EvalConfig
from components.rl.config import LoRAConfig, OverlongConfig, RLConfig  # noqa: F401 (composed and re-exported)
from components.serving.vllm_server import VLLMOptions

STAGES = ("curate", "estimate_difficulty", "rl_train", "compress", "evaluate", "deploy")


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the field at fault."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TinyModelConfig(_Strict):
    hidden_size: int = Field(64, description="model width of the tiny random model")
    num_layers: int = Field(2, description="decoder layers")
    num_heads: int = Field(4, description="attention heads")
    num_kv_heads: int = Field(2, description="key/value heads (grouped-query attention)")
    intermediate_size: int = Field(128, description="MLP width")


class ModelConfig(_Strict):
    """Which base policy to start from."""

    source: str = Field(
        "embedded:smollm2",
        description="embedded:smollm2 | tiny-random | a local checkpoint folder | a hub id",
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="shape of the model when source is tiny-random")
    seed: int = Field(0, description="initialisation seed of the tiny random model")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: float32 on CPU (no native bf16), bfloat16 on CUDA"
    )
    refresh: bool = Field(False, description="recompute this stage even when the cache has an entry")


class DifficultyStageConfig(EstimateConfig):
    """Offline estimate settings plus the selection policy applied when RL samples prompts.

    The estimate's cache key covers only what changes the estimate (sampling settings,
    prior, buckets), so recipes that differ elsewhere reuse it.
    """

    selection: SelectionConfig = Field(default_factory=SelectionConfig,
                                       description="which prompts RL samples, and in what order")
    batch_prompts: int = Field(32, ge=1, description="prompts per generation call")
    enabled: bool = Field(True, description="false: skip the estimate; RL draws from every curated prompt")
    refresh: bool = Field(False, description="recompute this stage even when the cache has an entry")


class CompressConfig(_Strict):
    variants: list[VariantConfig] = Field(
        default_factory=list, description="variants to build, e.g. rtn-w8, gptq-w4g64, wanda-2:4 (or full objects)")
    calibration_samples: int = Field(64, ge=1, description="calibration prompts (GPTQ, Wanda)")
    calibration_seq_len: int = Field(64, ge=8, description="tokens per calibration prompt")
    refresh: bool = Field(False, description="recompute this stage even when the cache has an entry")

    @field_validator("variants", mode="before")
    @classmethod
    def _parse_short(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [parse_variant(x) if isinstance(x, str) else x for x in v]
        return v


class EvaluateConfig(EvalConfig):
    gate: GateConfig = Field(default_factory=GateConfig, description="promotion gate against the champion")


class DeployConfig(_Strict):
    registered_model_name: str = Field("posttrain-policy", description="MLflow registered model name")
    serve: bool = Field(False, description="start a vLLM server for the champion (needs make vllm)")
    port: int = Field(8100, description="first of the two blue/green ports")
    vllm: VLLMOptions = Field(default_factory=VLLMOptions, description="server sizes/precision for serve")
    refresh: bool = Field(False, description="recompute this stage even when the cache has an entry")


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
