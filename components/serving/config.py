"""The deploy stage's config: registry name, and the optional blue/green vLLM server."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from components.serving.vllm_server import VLLMOptions


class DeployConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    registered_model_name: str = Field("posttrain-policy", description="MLflow registered model name")
    serve: bool = Field(False, description="start a vLLM server for the champion (needs make vllm)")
    port: int = Field(8100, description="first of the two blue/green ports")
    vllm: VLLMOptions = Field(default_factory=lambda: VLLMOptions.model_validate({}), description="server sizes/precision for serve")
    refresh: bool = Field(False, description="recompute this stage even when the cache has an entry")
