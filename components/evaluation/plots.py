"""Artifacts for a human reading the evaluate stage: accuracy-vs-size plot and a comparison table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from components.evaluation.metrics import pareto_frontier
from components.evaluation.runner import CandidateReport


def pareto_plot(
    reports: list[CandidateReport],
    path: str | Path,
    chosen: str | None = None,
    metric: str = "greedy_pass1",
) -> Path:
    """Write a PNG of accuracy vs size with the Pareto frontier drawn and the chosen model starred.

    Uses a bare Agg canvas (no pyplot) so it never touches global backend state in a worker.
    Reports without a size or without the metric cannot be placed and are listed under the title.
    """
    path = Path(path)
    placed = [r for r in reports if r.size_bytes is not None and getattr(r, metric) is not None]
    unplaced = [r.name for r in reports if r not in placed]
    on_front = set(pareto_frontier([(r.name, getattr(r, metric), r.size_bytes) for r in placed]))

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for r in placed:
        x, y = r.size_bytes / 1e6, getattr(r, metric)  # type: ignore[operator]
        front = r.name in on_front
        ax.scatter(
            [x], [y], s=180 if r.name == chosen else 60, zorder=3,
            color="tab:red" if front else "tab:gray",
            marker="*" if r.name == chosen else "o",
            edgecolors="black" if r.name == chosen else "none",
        )
        ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front_pts = sorted((r.size_bytes / 1e6, getattr(r, metric)) for r in placed if r.name in on_front)  # type: ignore[operator]
    if front_pts:
        xs, ys = zip(*front_pts, strict=True)
        ax.step(xs, ys, where="post", color="tab:red", alpha=0.6, label="Pareto frontier")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("size (MB)")
    ax.set_ylabel(metric)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    title = f"{metric} vs size" + (f" (chosen: {chosen})" if chosen else "")
    if unplaced:
        title += f"\nnot placed (no size or metric): {', '.join(unplaced)}"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _r(x: float | None, digits: int = 4) -> float | None:
    """Round for display; inf (no correct answer) becomes None so the table stays valid JSON."""
    if x is None or math.isinf(x) or math.isnan(x):
        return None
    return round(x, digits)


def comparison_table(reports: list[CandidateReport]) -> list[dict[str, Any]]:
    """One row per report, columns ready for an MLflow table artifact."""
    return [
        {
            "name": r.name,
            "greedy_pass1": _r(r.greedy_pass1),
            "pass_at_1_sampled": _r(r.pass_at_1_sampled),
            "pass_at_k": _r(r.pass_at_k),
            "k": r.k,
            "mean_output_tokens": _r(r.mean_output_tokens, 2),
            "tokens_per_correct": _r(r.tokens_per_correct, 2),
            "latency_s": _r(r.latency_s, 3),
            "size_mb": None if r.size_bytes is None else round(r.size_bytes / 1e6, 3),
            "deterministic": r.deterministic,
            "negative_flips": r.negative_flips,
            "positive_flips": r.positive_flips,
        }
        for r in reports
    ]
