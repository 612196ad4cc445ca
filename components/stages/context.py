"""What a stage may do besides computing: report progress, metrics, files and tables.

Tasks supply implementations backed by MLflow and Prefect; components only see callables,
so they never know they are orchestrated. The default context does nothing (unit tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, Field

from components.artifacts import ArtifactRef


def _noop(*_a, **_k) -> None:
    return None


@dataclass
class StageContext:
    device: str = "cpu"
    log_metrics: Callable[[dict[str, float], int | None], None] = _noop
    log_artifact: Callable[[Path, str | None], None] = _noop
    log_table: Callable[[list[dict], str], None] = _noop
    log_dataset: Callable[[Path, str, str, str], None] = _noop
    progress: Callable[[str, float], None] = _noop
    tracker: object | None = None  # components.tracking.Tracker where a stage needs the registry
    extra: dict = field(default_factory=dict)


class StageResult(BaseModel):
    """What a stage task returns and Prefect persists: handles and figures, never payloads."""

    stage: str
    key: str
    outputs: dict[str, ArtifactRef] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    seconds: float = 0.0
    info: dict = Field(default_factory=dict)
