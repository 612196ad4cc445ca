"""The evaluate stage's config: what to measure (``EvalConfig``) and the promotion gate."""

from __future__ import annotations

from pydantic import Field

from components.evaluation.gate import GateConfig
from components.evaluation.runner import EvalConfig


class EvaluateConfig(EvalConfig):
    gate: GateConfig = Field(default_factory=lambda: GateConfig.model_validate({}), description="promotion gate against the champion")
