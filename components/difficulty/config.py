"""The difficulty stage's config: the offline estimate's settings plus the selection policy."""

from __future__ import annotations

from pydantic import Field

from components.difficulty.estimate import EstimateConfig
from components.difficulty.selection import SelectionConfig
from components.environments.base import EnvironmentSpec


class DifficultyStageConfig(EstimateConfig):
    """Offline estimate settings plus the selection policy applied when RL samples prompts.

    The estimate's cache key covers only what changes the estimate (sampling settings,
    prior, buckets), so recipes that differ elsewhere reuse it.
    """

    selection: SelectionConfig = Field(default_factory=lambda: SelectionConfig.model_validate({}),
                                       description="which prompts RL samples, and in what order")
    batch_prompts: int = Field(32, ge=1, description="prompts per generation call")
    shards: int = Field(1, ge=1, description="split the estimate into this many tasks (blocks of batch_prompts "
                        "prompts each); the merged payload is the same for any count, so this only spreads the work "
                        "(POSTTRAIN_EXECUTOR=ray runs the shards on the cluster)")
    enabled: bool = Field(True, description="false: skip the estimate; RL draws from every curated prompt")
    refresh: bool = Field(False, description="recompute this stage even when the cache has an entry")
    environment: EnvironmentSpec | None = Field(
        None, description="estimate pass rates through this environment's episodes; None: rl_train.environment "
        "when the recipe names one, else single-turn generation")
