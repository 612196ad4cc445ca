"""Artifacts for a human reading the evaluate stage: accuracy-vs-size plot and a comparison table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from components.evaluation.metrics import pareto_frontier
from components.evaluation.runner import CandidateReport

_OFFSETS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1.3), (0, -1.3), (1.3, 0), (-1.3, 0))
_RADII_PT = (7, 14, 24, 36, 52, 72, 96)


def _overlaps(box, boxes) -> bool:
    return any(box.overlaps(b) for b in boxes)


def place_labels(ax, renderer, points: list[tuple[str, float, float, bool]]) -> list:
    """Label each point without overlapping another label, a marker or the axes' edge.

    Tries positions around the point at growing distances (a line joins a label placed far
    from its point) and keeps the first that is free; a label with no free place keeps the
    last try. Positions are checked in display space, so the figure layout must be final.
    """
    ax_box = ax.get_window_extent(renderer)
    taken = []
    for _, x, y, _chosen in points:  # the markers themselves
        px, py = ax.transData.transform((x, y))
        taken.append(Bbox.from_extents(px - 6, py - 6, px + 6, py + 6))
    labels = []
    for name, x, y, chosen in points:
        text = None
        for r in _RADII_PT:
            for dx, dy in _OFFSETS:
                if text is not None:
                    text.remove()
                text = ax.annotate(
                    f"{name} (chosen)" if chosen else name, (x, y), xytext=(dx * r, dy * r),
                    textcoords="offset points", fontsize=10, fontweight="bold" if chosen else "normal",
                    ha="left" if dx > 0 else "right" if dx < 0 else "center",
                    va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                    arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.8} if r > 14 else None,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                    zorder=4, gid="pareto-label",
                )
                text.update_positions(renderer)  # an annotation places its text at draw time
                box = Text.get_window_extent(text, renderer).expanded(1.02, 1.05)
                inside = ax_box.contains(box.x0, box.y0) and ax_box.contains(box.x1, box.y1)
                if inside and not _overlaps(box, taken):
                    break
            else:
                continue
            break
        taken.append(Text.get_window_extent(text, renderer))
        labels.append(text)
    return labels


def pareto_figure(reports: list[CandidateReport], chosen: str | None = None,
                  metric: str = "greedy_pass1") -> Figure:
    """Accuracy vs size: frontier drawn, chosen model starred and named, labels never overlapping.

    The legend sits outside the axes so it covers no point or label. Reports without a size or
    without the metric cannot be placed and are listed under the title.
    """
    placed = [r for r in reports if r.size_bytes is not None and getattr(r, metric) is not None]
    unplaced = [r.name for r in reports if r not in placed]
    on_front = set(pareto_frontier([(r.name, getattr(r, metric), r.size_bytes) for r in placed]))
    fig = Figure(figsize=(10, 6), dpi=120)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.08, right=0.76, top=0.88, bottom=0.1)
    ax = fig.add_subplot()
    pts = [(r.name, r.size_bytes / 1e6, getattr(r, metric), r.name == chosen) for r in placed]  # type: ignore[operator]
    # The chosen star is drawn under the dots so a neighbour at almost the same place stays visible.
    groups = (("on the Pareto frontier", lambda n: n in on_front and n != chosen, "tab:red", "o", 60, 3),
              ("not on the frontier", lambda n: n not in on_front and n != chosen, "tab:gray", "o", 60, 3),
              ("chosen by the gate", lambda n: n == chosen, "gold", "*", 380, 2))
    for label, member, color, marker, size, z in groups:
        xs = [(x, y) for n, x, y, _ in pts if member(n)]
        if xs:
            ax.scatter(*zip(*xs, strict=True), s=size, color=color, marker=marker, zorder=z, label=label,
                       edgecolors="black", linewidths=0.8)
    front_pts = sorted((x, y) for n, x, y, _ in pts if n in on_front)
    if len(front_pts) > 1:  # one point draws no line: no legend entry for it either
        ax.step(*zip(*front_pts, strict=True), where="post", color="tab:red", alpha=0.5, label="Pareto frontier")
    if pts:
        xs = [x for _, x, _, _ in pts]
        span = (max(xs) - min(xs)) or max(xs) or 1.0
        ax.set_xlim(min(xs) - 0.25 * span, max(xs) + 0.25 * span)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=10, frameon=False)
    ax.set_xlabel("size (MB)", fontsize=11)
    ax.set_ylabel(f"{metric} (held-out)", fontsize=11)
    ax.set_ylim(-0.08, 1.08)
    ax.grid(alpha=0.3)
    title = f"{metric} vs size" + (f"  (chosen: {chosen})" if chosen else "")
    if unplaced:
        title += f"\nnot placed (no size or metric): {', '.join(unplaced)}"
    ax.set_title(title, fontsize=12)
    place_labels(ax, fig.canvas.get_renderer(), pts)
    return fig


def pareto_plot(
    reports: list[CandidateReport],
    path: str | Path,
    chosen: str | None = None,
    metric: str = "greedy_pass1",
) -> Path:
    """Write the PNG of ``pareto_figure`` (a bare Agg canvas, no pyplot: no global backend state)."""
    path = Path(path)
    fig = pareto_figure(reports, chosen, metric)
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
            "sampled": r.sampled,
        }
        for r in reports
    ]
