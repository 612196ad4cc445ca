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
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.compression.config import CompressConfig
from components.data.config import CurateConfig
from components.difficulty.config import DifficultyStageConfig
from components.evaluation.config import EvaluateConfig
from components.models import ModelConfig
from components.rl.config import LoRAConfig, OverlongConfig, RLConfig  # noqa: F401 (composed and re-exported)
from components.serving.config import DeployConfig

STAGES = ("curate", "estimate_difficulty", "rl_train", "compress", "evaluate", "deploy")


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the field at fault."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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

    @model_validator(mode="after")
    def _environment_everywhere(self) -> "Recipe":
        # Difficulty and evaluation measure the policy the way RL samples it: through rl_train's
        # environment unless they name their own.
        env = self.rl_train.environment
        if env is not None:
            for stage in (self.estimate_difficulty, self.evaluate):
                if stage.environment is None:
                    stage.environment = env.model_copy()
        return self

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
