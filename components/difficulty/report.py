"""Figures and tables of an estimate, for the stage's MLflow artifacts.

Plots go through matplotlib's Agg canvas directly (no pyplot, no global backend switch), so they
work headless and never disturb another component's matplotlib state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from components.difficulty.buckets import BUCKETS, BucketConfig
from components.difficulty.estimate import DifficultyRecord


def bucket_table(records: Sequence[DifficultyRecord]) -> list[dict[str, Any]]:
    """One row per bucket, hardest first: prompts, share of all prompts, mean posterior pass rate
    (None for an empty bucket)."""
    n = len(records)
    rows = []
    for name in BUCKETS:
        means = [r.mean for r in records if r.bucket == name]
        rows.append(
            {
                "bucket": name,
                "prompts": len(means),
                "share": len(means) / n if n else 0.0,
                "mean_pass_rate": float(np.mean(means)) if means else None,
            }
        )
    return rows


def plot_pass_rate_histogram(
    records: Sequence[DifficultyRecord],
    path: str | Path,
    buckets: BucketConfig | None = None,
    bins: int = 20,
) -> Path:
    """PNG histogram of posterior mean pass rates with the bucket thresholds marked."""
    buckets = buckets or BucketConfig()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist([r.mean for r in records], bins=bins, range=(0.0, 1.0), color="#4c72b0", edgecolor="white")
    for x in (buckets.unsolved_max, buckets.learnable_min, buckets.easy_min, buckets.solved_min):
        ax.axvline(x, color="#c44e52", linestyle="--", linewidth=1)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("posterior mean pass rate")
    ax.set_ylabel("prompts")
    ax.set_title(f"Pass rate of {len(records)} prompts (dashed: bucket thresholds)")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
