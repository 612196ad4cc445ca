"""Evaluate one candidate model on verifiable prompts through an injected `generate` function.

The engine and the scorer are passed in, so this module knows nothing about transformers, vLLM or
the reward code: the same figures come out whichever engine produced the completions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.evaluation.metrics import cost_of_pass, determinism, flips, pass_at_k


@dataclass(frozen=True)
class Completion:
    """One generated answer: its text and how many tokens it cost."""

    text: str
    num_tokens: int
    reward: float | None = None  # an environment's reward (multi-turn episode); None: the scorer decides
    tool_calls: int | None = None  # the episode's tool calls; None: no environment


class GenerateFn(Protocol):
    """n completions per prompt, in prompt order; temperature 0 means greedy decoding."""

    def __call__(
        self, prompts: list[str], n: int, temperature: float, max_new_tokens: int, seed: int
    ) -> Sequence[Sequence[Completion]]: ...


ScoreFn = Callable[[dict[str, Any], str], float]
# progress(phase, passes_done, passes_total); phase is "greedy", "determinism" or "sampled".
ProgressFn = Callable[[str, int, int], None]

CORRECT_THRESHOLD = 0.5


class EvalConfig(BaseModel):
    """Options of the evaluate stage (part of the recipe)."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(4, ge=1, description="pass@k is reported for this k")
    n_samples: int | None = Field(
        None, ge=1, description="samples per prompt for the sampled pass; None means k (n >= k)"
    )
    temperature: float = Field(1.0, ge=0.0, description="temperature of the sampled pass")
    max_new_tokens: int = Field(32, ge=1, description="generation length limit")
    greedy: bool = Field(True, description="run the greedy pass (greedy pass@1, flips, latency)")
    determinism_check: bool = Field(True, description="run the greedy pass twice and compare texts")
    max_rows: int | None = Field(None, ge=1, description="evaluate only the first rows")
    seed: int = Field(0, description="sampling seed")
    refresh: bool = Field(False, description="recompute even when a cached result exists")

    @model_validator(mode="after")
    def _samples_cover_k(self) -> EvalConfig:
        if self.n_samples is not None and self.n_samples < self.k:
            raise ValueError(f"n_samples ({self.n_samples}) must be >= k ({self.k})")
        return self

    @property
    def samples(self) -> int:
        return self.k if self.n_samples is None else self.n_samples


class RowResult(BaseModel):
    """Per-prompt outcome, kept for the per-prompt artifact and for debugging a flip."""

    model_config = ConfigDict(extra="forbid")

    id: str
    greedy_text: str | None
    greedy_correct: bool | None
    sampled_correct: int
    n_samples: int


class CandidateReport(BaseModel):
    """All figures of one evaluated model; what the gate and the plots consume."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    name: str
    greedy_pass1: float | None  # None when cfg.greedy is off
    pass_at_1_sampled: float | None  # mean over prompts of correct samples / samples; None when skipped
    pass_at_k: float | None  # mean over prompts of the unbiased pass@k; None when skipped
    k: int
    mean_output_tokens: float  # greedy pass; sampled pass when greedy is off
    tokens_per_correct: float  # same pass as mean_output_tokens; inf when none correct
    latency_s: float | None  # wall time of the greedy generate call
    size_bytes: int | None
    deterministic: bool | None  # None when not checked
    correct: dict[str, bool]  # greedy correctness per prompt id; empty when greedy is off
    n_rows: int
    details: list[RowResult] = Field(default_factory=list)
    negative_flips: int | None = None  # filled by compare_to_champion
    positive_flips: int | None = None
    flip_reference: str | None = None  # name of the report the flips were counted against
    sampled: str = "measured"  # or "skipped (greedy gate failed: ...)": no sampled pass was run
    tool_call_rate: float | None = None  # greedy answers with a tool call (environment only)
    tool_call_rate_sampled: float | None = None  # sampled answers with a tool call (environment only)


def _checked(out: Sequence[Sequence[Completion]], n_prompts: int, n: int) -> list[list[Completion]]:
    """Fail loudly on an engine that drops prompts or samples: silent misalignment corrupts scores."""
    result = [list(x) for x in out]
    if len(result) != n_prompts:
        raise ValueError(f"generate returned {len(result)} prompt groups for {n_prompts} prompts")
    for i, group in enumerate(result):
        if len(group) != n:
            raise ValueError(f"generate returned {len(group)} completions for prompt {i}, expected {n}")
    return result


def _called(cs: Sequence[Completion]) -> int | None:
    """How many of the completions (episodes) called a tool; None without an environment."""
    return None if any(c.tool_calls is None for c in cs) else sum(int(bool(c.tool_calls)) for c in cs)


def _graded(score: ScoreFn, row: dict[str, Any], c: Completion) -> bool:
    return _scored(score, row, c.text) if c.reward is None else _scored(lambda _r, _t: c.reward or 0.0, row, c.text)


def _scored(score: ScoreFn, row: dict[str, Any], text: str) -> bool:
    value = float(score(row, text))
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise ValueError(f"score for row {row['id']!r} is {value}, outside [0, 1]")
    return value >= CORRECT_THRESHOLD


class GreedyPass(BaseModel):
    """The greedy pass of one model: answers, their scores, token count, latency, determinism."""

    texts: list[str]
    correct: list[bool]
    tokens: int
    latency: float
    deterministic: bool | None
    tool_calls: int | None = None  # answers (episodes) with at least one tool call; None without an environment


class SampledPass(BaseModel):
    """The sampled pass of one model: correct samples per prompt and the tokens they cost."""

    correct: list[int]
    tokens: int
    tool_calls: int | None = None  # samples (episodes) with at least one tool call


def eval_rows(rows: Sequence[dict[str, Any]], cfg: EvalConfig) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows to evaluate (at most ``max_rows``) and their ids, which must be unique."""
    rows = list(rows)[: cfg.max_rows] if cfg.max_rows is not None else list(rows)
    if not rows:
        raise ValueError("no rows to evaluate")
    ids = [str(r["id"]) for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("row ids must be unique: flips are counted per id")
    return rows, ids


def greedy_pass(generate: GenerateFn, rows: list[dict[str, Any]], score: ScoreFn, cfg: EvalConfig,
                tick: Callable[[str], None] = lambda phase: None) -> GreedyPass:
    """Greedy answers, their scores and token count; a second identical pass when checking determinism."""
    prompts = [str(r["prompt"]) for r in rows]
    start = time.perf_counter()
    raw = generate(prompts, 1, 0.0, cfg.max_new_tokens, cfg.seed)
    latency = time.perf_counter() - start
    greedy = [g[0] for g in _checked(raw, len(prompts), 1)]
    tick("greedy")
    texts = [c.text for c in greedy]
    deterministic = None
    if cfg.determinism_check:
        again = _checked(generate(prompts, 1, 0.0, cfg.max_new_tokens, cfg.seed), len(prompts), 1)
        tick("determinism")
        deterministic = determinism(texts, [g[0].text for g in again]).identical
    return GreedyPass(texts=texts, correct=[_graded(score, r, c) for r, c in zip(rows, greedy, strict=True)],
                      tokens=sum(c.num_tokens for c in greedy), latency=latency, deterministic=deterministic,
                      tool_calls=_called(greedy))


def sampled_pass(generate: GenerateFn, rows: list[dict[str, Any]], score: ScoreFn, cfg: EvalConfig,
                 tick: Callable[[str], None] = lambda phase: None) -> SampledPass:
    """``cfg.samples`` answers per prompt at ``cfg.temperature``; correct ones counted per prompt."""
    n = cfg.samples
    prompts = [str(r["prompt"]) for r in rows]
    sampled = _checked(generate(prompts, n, cfg.temperature, cfg.max_new_tokens, cfg.seed), len(rows), n)
    tick("sampled")
    return SampledPass(correct=[sum(_graded(score, r, c) for c in group) for r, group in zip(rows, sampled, strict=True)],
                       tokens=sum(c.num_tokens for group in sampled for c in group),
                       tool_calls=_called([c for group in sampled for c in group]))


def _progress_ticker(cfg: EvalConfig, progress: ProgressFn | None) -> Callable[[str], None]:
    total = 1 + (2 if cfg.greedy and cfg.determinism_check else 1 if cfg.greedy else 0)
    done = [0]

    def tick(phase: str) -> None:
        done[0] += 1
        if progress is not None:
            progress(phase, done[0], total)

    return tick


def evaluate_candidate(
    name: str,
    generate: GenerateFn,
    rows: Sequence[dict[str, Any]],
    score: ScoreFn,
    cfg: EvalConfig,
    size_bytes: int | None = None,
    progress: ProgressFn | None = None,
) -> CandidateReport:
    """Run the greedy pass (twice if checking determinism) and the sampled pass; report figures."""
    rows, _ids = eval_rows(rows, cfg)
    tick = _progress_ticker(cfg, progress)
    greedy = greedy_pass(generate, rows, score, cfg, tick) if cfg.greedy else None
    return build_report(name, rows, cfg, greedy, sampled_pass(generate, rows, score, cfg, tick), size_bytes)


def build_report(name: str, rows: Sequence[dict[str, Any]], cfg: EvalConfig, greedy: GreedyPass | None,
                 sampled: SampledPass | None, size_bytes: int | None = None,
                 skipped: str | None = None) -> CandidateReport:
    """One model's figures from its passes. ``sampled`` None: the sampled pass was not run
    (``skipped`` says why); its figures are None and each row counts 0 of 0 samples."""
    rows, ids = eval_rows(rows, cfg)
    n_rows = len(rows)
    n = cfg.samples if sampled is not None else 0
    counts = sampled.correct if sampled is not None else [0] * n_rows
    if greedy is not None:
        mean_tokens = greedy.tokens / n_rows
        per_correct = cost_of_pass(greedy.tokens, sum(greedy.correct))
    elif sampled is not None:
        mean_tokens = sampled.tokens / (n_rows * n)
        per_correct = cost_of_pass(sampled.tokens, sum(counts))
    else:
        raise ValueError("a report needs the greedy pass or the sampled pass")
    details = [
        RowResult(id=ids[i], greedy_text=None if greedy is None else greedy.texts[i],
                  greedy_correct=None if greedy is None else greedy.correct[i],
                  sampled_correct=counts[i], n_samples=n)
        for i in range(n_rows)
    ]
    return CandidateReport(
        name=name,
        greedy_pass1=None if greedy is None else sum(greedy.correct) / n_rows,
        pass_at_1_sampled=None if sampled is None else sum(c / n for c in counts) / n_rows,
        pass_at_k=None if sampled is None else sum(pass_at_k(n, c, cfg.k) for c in counts) / n_rows,
        k=cfg.k,
        mean_output_tokens=mean_tokens,
        tokens_per_correct=per_correct,
        latency_s=None if greedy is None else greedy.latency,
        size_bytes=size_bytes,
        deterministic=None if greedy is None else greedy.deterministic,
        correct={} if greedy is None else dict(zip(ids, greedy.correct, strict=True)),
        n_rows=n_rows,
        details=details,
        sampled="measured" if sampled is not None else f"skipped ({skipped or 'not run'})",
        tool_call_rate=None if greedy is None or greedy.tool_calls is None else greedy.tool_calls / n_rows,
        tool_call_rate_sampled=(None if sampled is None or sampled.tool_calls is None
                                else sampled.tool_calls / (n_rows * n)),
    )


def compare_to_champion(report: CandidateReport, champion_report: CandidateReport) -> CandidateReport:
    """Copy of `report` with flips against the champion; None when no greedy prompts are shared."""
    counts = flips(champion_report.correct, report.correct)
    if counts.shared == 0:
        return report.model_copy(update={"negative_flips": None, "positive_flips": None, "flip_reference": None})
    return report.model_copy(
        update={
            "negative_flips": counts.negative,
            "positive_flips": counts.positive,
            "flip_reference": champion_report.name,
        }
    )
