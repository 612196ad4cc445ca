"""The evaluate stage's config: what to measure (``EvalConfig``) and the promotion gate."""

from __future__ import annotations

from pydantic import Field

from components.environments.base import EnvironmentSpec
from components.evaluation.gate import GateConfig
from components.evaluation.runner import EvalConfig


class EvaluateConfig(EvalConfig):
    gate: GateConfig = Field(default_factory=lambda: GateConfig.model_validate({}), description="promotion gate against the champion")
    environment: EnvironmentSpec | None = Field(
        None, description="answer through this environment's episodes (pass@1 through the episode, tool-call "
        "rate); None: rl_train.environment when the recipe names one, else single-turn generation")
