"""Pareto plot file and comparison table rows."""

import math
from pathlib import Path

from components.evaluation.plots import comparison_table, pareto_plot
from components.evaluation.runner import CandidateReport


def rep(name: str, acc: float, size: int | None, per_correct: float = 12.5) -> CandidateReport:
    return CandidateReport(
        name=name,
        greedy_pass1=acc,
        pass_at_1_sampled=acc / 2,
        pass_at_k=2 / 3,
        k=4,
        mean_output_tokens=7.25,
        tokens_per_correct=per_correct,
        latency_s=1.23456,
        size_bytes=size,
        deterministic=True,
        correct={"p": True},
        n_rows=1,
        negative_flips=2,
        positive_flips=3,
    )


def test_pareto_plot_writes_png(tmp_path: Path) -> None:
    reports = [rep("base", 0.4, 540_000_000), rep("w4", 0.5, 120_000_000), rep("pruned", 0.3, 300_000_000), rep("nosize", 0.6, None)]
    out = pareto_plot(reports, tmp_path / "sub" / "pareto.png", chosen="w4")
    assert out == tmp_path / "sub" / "pareto.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000  # an actual image, not an empty header


def test_pareto_plot_with_nothing_placeable(tmp_path: Path) -> None:
    out = pareto_plot([rep("nosize", 0.6, None)], tmp_path / "p.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_comparison_table_rows() -> None:
    rows = comparison_table([rep("w4", 0.5, 2_500_000), rep("none_right", 0.0, None, per_correct=math.inf)])
    assert rows[0] == {
        "name": "w4",
        "greedy_pass1": 0.5,
        "pass_at_1_sampled": 0.25,
        "pass_at_k": 0.6667,  # 2/3 rounded to 4 places
        "k": 4,
        "mean_output_tokens": 7.25,
        "tokens_per_correct": 12.5,
        "latency_s": 1.235,  # 1.23456 to 3 places
        "size_mb": 2.5,  # 2,500,000 bytes / 1e6
        "deterministic": True,
        "negative_flips": 2,
        "positive_flips": 3,
        "sampled": "measured",
    }
    assert rows[1]["tokens_per_correct"] is None  # inf (nothing correct) is not valid JSON
    assert rows[1]["size_mb"] is None


def test_pareto_labels_do_not_overlap_on_overlapping_points(tmp_path: Path) -> None:
    """Base and RL share a size and a score; three variants sit close together: every label
    box (matplotlib's text extents) stays clear of the others and inside the axes."""
    from matplotlib.text import Text

    from components.evaluation.plots import pareto_figure

    reports = [rep("base", 0.25, 314_000), rep("rl", 0.25, 314_000), rep("rtn-w8", 0.25, 111_000),
               rep("rtn-w8a8-sq", 0.24, 112_000), rep("gptq-w4g64", 0.24, 110_000),
               rep("magnitude-2:4", 0.0, 314_000), rep("wanda-2:4", 0.0, 313_000)]
    fig = pareto_figure(reports, chosen="rtn-w8")
    fig.canvas.draw()  # text positions as they are drawn
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_gid() == "pareto-label"]
    assert sorted(t.get_text() for t in labels) == sorted(
        f"{r.name} (chosen)" if r.name == "rtn-w8" else r.name for r in reports)
    boxes = [Text.get_window_extent(t, renderer) for t in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    ax_box = ax.get_window_extent(renderer)
    assert all(ax_box.x0 <= b.x0 and b.x1 <= ax_box.x1 and ax_box.y0 <= b.y0 and b.y1 <= ax_box.y1 for b in boxes)
    legend_box = ax.get_legend().get_window_extent(renderer)
    assert legend_box.x0 >= ax_box.x1  # outside the axes: it covers no point or label
    w, h = fig.get_size_inches() * fig.dpi
    assert w >= 1000 and h >= 600
    out = tmp_path / "pareto.png"
    fig.savefig(out, format="png")
