"""Promotion gate: which candidate (if any) replaces the champion, and why.

Every candidate gets a list of reasons, passing or failing, so the decision can be read in MLflow
without re-running anything. Accuracy tolerances are in percentage points of the metric.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from components.evaluation.metrics import flips, pareto_frontier
from components.evaluation.runner import CandidateReport

Metric = Literal["greedy_pass1", "pass_at_1_sampled", "pass_at_k"]
_EPS = 1e-9  # metrics are ratios of counts; keep exact ties from failing on rounding


class GateConfig(BaseModel):
    """Promotion rules (part of the recipe)."""

    model_config = ConfigDict(extra="forbid")

    metric: Metric = Field("greedy_pass1", description="metric the gate compares")
    tolerance: float = Field(
        0.0, ge=0.0, description="percentage points: pass when candidate >= reference - tolerance"
    )
    max_negative_flips: int | None = Field(None, ge=0, description="max prompts the reference got right and the candidate wrong")
    max_size_bytes: int | None = Field(None, ge=1, description="refuse candidates larger than this; null: no limit")
    require_determinism: bool = Field(True, description="refuse candidates whose two greedy passes differ")
    min_improvement_over_base: float | None = Field(
        None, description="percentage points the candidate must gain over the base model"
    )


class GateDecision(BaseModel):
    """The gate's verdict."""

    model_config = ConfigDict(extra="forbid")

    chosen: str | None
    reasons: dict[str, list[str]]  # per candidate, each check's outcome ("pass: ..." / "fail: ...")
    passed: list[str]
    frontier: list[str]  # all candidates' accuracy/size Pareto frontier, smallest first
    summary: str


def _pts(x: float) -> str:
    return f"{100 * x:.2f}%"


def _size(report: CandidateReport) -> float:
    return math.inf if report.size_bytes is None else float(report.size_bytes)


def _check(
    cand: CandidateReport,
    champion: CandidateReport | None,
    base: CandidateReport | None,
    cfg: GateConfig,
) -> tuple[list[str], bool]:
    """Run every check on one candidate; returns its reasons and whether all passed."""
    reasons: list[str] = []
    ok = True

    def fail(msg: str) -> None:
        nonlocal ok
        ok = False
        reasons.append(f"fail: {msg}")

    value = getattr(cand, cfg.metric)
    ref, label = (champion, "champion") if champion is not None else (base, "base")
    if value is None:
        fail(f"{cfg.metric} was not measured")
    elif ref is None:
        reasons.append("pass: no champion or base to compare against")
    elif (ref_value := getattr(ref, cfg.metric)) is None:
        fail(f"{label} {ref.name} has no {cfg.metric}")
    elif value + _EPS >= ref_value - cfg.tolerance / 100:
        reasons.append(f"pass: {cfg.metric} {_pts(value)} >= {label} {_pts(ref_value)} - {cfg.tolerance} pt")
    else:
        fail(f"{cfg.metric} {_pts(value)} < {label} {_pts(ref_value)} - {cfg.tolerance} pt")

    if cfg.min_improvement_over_base is not None:
        base_value = None if base is None else getattr(base, cfg.metric)
        if base_value is None:
            fail("min_improvement_over_base is set but there is no base figure")
        elif value is not None and value + _EPS >= base_value + cfg.min_improvement_over_base / 100:
            reasons.append(f"pass: {_pts(value)} gains >= {cfg.min_improvement_over_base} pt over base {_pts(base_value)}")
        elif value is not None:
            fail(f"{_pts(value)} gains < {cfg.min_improvement_over_base} pt over base {_pts(base_value)}")

    if cfg.max_negative_flips is not None:
        if ref is None:
            reasons.append("pass: no reference, flip limit not applied")
        else:
            counts = flips(ref.correct, cand.correct)
            if counts.shared == 0:
                fail(f"no greedy prompt ids shared with {label} {ref.name}: flips cannot be counted")
            elif counts.negative <= cfg.max_negative_flips:
                reasons.append(f"pass: {counts.negative} negative flips vs {label} <= {cfg.max_negative_flips}")
            else:
                fail(f"{counts.negative} negative flips vs {label} > {cfg.max_negative_flips}")

    if cfg.max_size_bytes is not None:
        if cand.size_bytes is None:
            fail("size unknown, size budget cannot be checked")
        elif cand.size_bytes <= cfg.max_size_bytes:
            reasons.append(f"pass: size {cand.size_bytes} B <= {cfg.max_size_bytes} B")
        else:
            fail(f"size {cand.size_bytes} B > budget {cfg.max_size_bytes} B")

    if cfg.require_determinism:
        if cand.deterministic is True:
            reasons.append("pass: greedy output deterministic")
        elif cand.deterministic is None:
            fail("determinism required but not checked")
        else:
            fail("two greedy passes gave different outputs")
    return reasons, ok


def decide(
    candidates: list[CandidateReport],
    champion: CandidateReport | None,
    base: CandidateReport | None,
    cfg: GateConfig,
) -> GateDecision:
    """Pick the best passing candidate: highest metric, then smaller size, then name.

    That candidate is always on the Pareto frontier of the passing ones (nothing passing beats its
    metric, and nothing with its metric is smaller), so 'best on the frontier' needs no extra step.
    """
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {names}")

    reasons: dict[str, list[str]] = {}
    passing: list[CandidateReport] = []
    for cand in candidates:
        reasons[cand.name], ok = _check(cand, champion, base, cfg)
        if ok:
            passing.append(cand)

    frontier = pareto_frontier(
        [(c.name, getattr(c, cfg.metric), c.size_bytes) for c in candidates if getattr(c, cfg.metric) is not None]
    )
    if not candidates:
        return GateDecision(chosen=None, reasons={}, passed=[], frontier=[], summary="no candidates to evaluate")
    if not passing:
        why = "; ".join(f"{n}: " + ", ".join(r[5:] for r in rs if r.startswith("fail:")) for n, rs in reasons.items())
        return GateDecision(
            chosen=None, reasons=reasons, passed=[], frontier=frontier, summary=f"no candidate passed the gate ({why})"
        )

    best = min(passing, key=lambda c: (-getattr(c, cfg.metric), _size(c), c.name))
    ref, label = (champion, "champion") if champion is not None else (base, "base")
    named = "" if ref is None or ref.name == label else f" {ref.name}"  # never "vs base base"
    against = "" if ref is None else f" vs {label}{named} {_pts(getattr(ref, cfg.metric) or 0.0)}"
    size = "unknown size" if best.size_bytes is None else f"{best.size_bytes / 1e6:.2f} MB"
    summary = (
        f"chose {best.name}: {cfg.metric} {_pts(getattr(best, cfg.metric))}, {size}{against}; "
        f"{len(passing)} of {len(candidates)} candidates passed"
    )
    return GateDecision(
        chosen=best.name, reasons=reasons, passed=[c.name for c in passing], frontier=frontier, summary=summary
    )


def greedy_gate_failures(
    cand: CandidateReport,
    champion: CandidateReport | None,
    base: CandidateReport | None,
    cfg: GateConfig,
) -> list[str]:
    """The gate's failing checks that the sampled pass cannot change (``cand`` has its greedy pass
    only): the metric when it is ``greedy_pass1``, negative flips, determinism, size. A candidate
    with any of these fails the gate whatever it samples, so its sampled pass can be skipped."""
    if cfg.metric != "greedy_pass1":  # the metric and the gain over base need the sampled pass
        cfg = cfg.model_copy(update={"metric": "greedy_pass1", "tolerance": math.inf,
                                     "min_improvement_over_base": None})
    reasons, _ok = _check(cand, champion, base, cfg)
    return [r[len("fail: "):] for r in reasons if r.startswith("fail: ")]
