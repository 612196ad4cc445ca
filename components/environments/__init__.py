"""Environments, tools and multi-turn episodes (see ``base`` for the interface and why)."""

from components.environments.base import (
    Environment,
    EnvironmentConfig,
    EnvironmentSpec,
    Observation,
    StepResult,
    available_environments,
    get_environment,
    make_environment,
    register_environment,
)
from components.environments.tools import Tool, ToolError, run_tool

__all__ = [
    "Environment", "EnvironmentConfig", "EnvironmentSpec", "Observation", "StepResult", "Tool", "ToolError",
    "available_environments", "get_environment", "make_environment", "register_environment", "run_tool",
]
