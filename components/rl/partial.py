"""Partial rollouts (APRIL): over-provision, stop early, carry unfinished samples over.

Why: in a synchronous step every generation batch runs as long as its longest sample, so
a long tail of lengths leaves most rows idle. Here a step asks for more prompt groups than
it needs, generates in chunks of ``chunk_tokens`` new tokens, stops as soon as
``target_groups`` groups are complete, and keeps every unfinished group in a buffer whose
samples are continued (from prompt + partial tokens) in the next step. Each token keeps the
policy version that sampled it and its behaviour log-prob, so the loss can correct stale
prefixes with truncated importance sampling.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field

from components.engines.base import Message, Sample, SamplingParams


class PartialRolloutConfig(BaseModel):
    """Partial-rollout settings (part of the RL config when wired into a recipe)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="carry unfinished samples over to the next step (APRIL)")
    over_provision: float = Field(1.5, ge=1.0, description="request this many times the target groups")
    chunk_tokens: int = Field(32, ge=1, description="new tokens per generation chunk (early-stop granularity)")
    max_buffer: int = Field(256, ge=0, description="most samples (finished or not) kept across steps")


@dataclass
class SampleState:
    """One sample in flight: everything needed to continue it and to train on it."""

    sample_index: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # None while unfinished

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class GroupState:
    """All ``group_size`` samples of one prompt; a group trains only once all are finished."""

    row_id: str
    row: dict
    prompt_token_ids: list[int]
    samples: list[SampleState]
    first_step_version: int

    @property
    def complete(self) -> bool:
        return all(s.finished for s in self.samples)

    @property
    def generated_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.samples)


class CompleteGroup(NamedTuple):
    """Same shape as the trainer's ``(row, prompt_token_ids, samples)`` group tuples."""

    row: dict
    prompt_token_ids: list[int]
    samples: list[Sample]


def _json_safe(x: Any) -> Any:
    """Rows come from parquet/pandas; numpy scalars must become plain Python for JSON."""
    return json.loads(json.dumps(x, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _row_id(row: dict) -> str:
    if "id" in row:
        return str(row["id"])
    return json.dumps(_json_safe(row), sort_keys=True)


class RolloutBuffer:
    """Groups carried across steps: unfinished ones, and complete ones beyond the target.

    Order is oldest first, which is also the priority order for continuation and for
    being returned, so staleness stays bounded.
    """

    def __init__(self, max_buffer: int = 256) -> None:
        self.max_buffer = max_buffer
        self.groups: list[GroupState] = []
        self.dropped_samples = 0

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def num_samples(self) -> int:
        return sum(len(g.samples) for g in self.groups)

    @property
    def num_unfinished(self) -> int:
        return sum(not s.finished for g in self.groups for s in g.samples)

    def row_ids(self) -> set[str]:
        return {g.row_id for g in self.groups}

    def put(self, groups: list[GroupState]) -> int:
        """Replace the contents, keeping whole groups in order until ``max_buffer`` samples."""
        kept: list[GroupState] = []
        n = dropped = 0
        for g in groups:
            if n + len(g.samples) <= self.max_buffer:
                kept.append(g)
                n += len(g.samples)
            else:
                dropped += len(g.samples)
        self.groups = kept
        self.dropped_samples += dropped
        return dropped

    def take(self) -> list[GroupState]:
        out, self.groups = self.groups, []
        return out

    def state_dict(self) -> dict:
        return {
            "max_buffer": self.max_buffer,
            "dropped_samples": self.dropped_samples,
            "groups": [
                {
                    "row_id": g.row_id,
                    "row": _json_safe(g.row),
                    "prompt_token_ids": list(g.prompt_token_ids),
                    "first_step_version": g.first_step_version,
                    "samples": [asdict(s) for s in g.samples],
                }
                for g in self.groups
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        self.max_buffer = int(state["max_buffer"])
        self.dropped_samples = int(state.get("dropped_samples", 0))
        self.groups = [
            GroupState(
                row_id=g["row_id"], row=g["row"], prompt_token_ids=list(g["prompt_token_ids"]),
                first_step_version=int(g["first_step_version"]),
                samples=[SampleState(**s) for s in g["samples"]],
            )
            for g in state["groups"]
        ]


def _to_sample(gi: int, s: SampleState, tokenizer: Any) -> Sample:
    return Sample(
        prompt_index=gi, sample_index=s.sample_index, token_ids=list(s.token_ids), logprobs=list(s.logprobs),
        text=tokenizer.decode(s.token_ids, skip_special_tokens=True), finish_reason=s.finish_reason,  # type: ignore[arg-type]
        versions=list(s.versions),
    )


def _stop_in_tail(tokenizer: Any, toks: list[int], stops: list[str]) -> bool:
    # The engine checks stop strings within one chunk; this catches one spanning a chunk boundary.
    tail = tokenizer.decode(toks[-16:], skip_special_tokens=True)
    return any(s in tail for s in stops)


@dataclass
class _Round:
    """Counters of one ``generate_with_partial`` call."""

    new_tokens: int = 0
    engine_calls: int = 0
    rounds: int = 0


def _start_groups(engine: Any, rows: list[dict], group_size: int, want: int, buffer: RolloutBuffer,
                  policy_version: int, messages_fn: Callable[[dict], list[Message]]
                  ) -> tuple[list[GroupState], int]:
    """The buffer's groups (oldest first), then fresh groups for the first unseen rows up to ``want``;
    returns the groups and how many are fresh."""
    groups = buffer.take()
    seen = {g.row_id for g in groups}
    fresh_rows: list[tuple[str, dict]] = []
    for r in rows:
        if len(groups) + len(fresh_rows) >= want:
            break
        rid = _row_id(r)
        if rid not in seen:
            seen.add(rid)
            fresh_rows.append((rid, r))
    if fresh_rows:
        prompt_ids = engine.encode_prompts([messages_fn(r) for _, r in fresh_rows])
        for (rid, r), pids in zip(fresh_rows, prompt_ids):
            groups.append(GroupState(rid, r, list(pids), [SampleState(j) for j in range(group_size)], policy_version))
    return groups, len(fresh_rows)


def _extend(s: SampleState, room: int, result: tuple[list[int], list[float], str], policy_version: int,
            params: SamplingParams, tok: Any) -> int:
    """Append one chunk's tokens to a sample (at most ``room``) and set its finish reason; returns
    the tokens kept."""
    toks, lps, reason = result
    keep = min(len(toks), room)
    s.token_ids.extend(toks[:keep])
    s.logprobs.extend(lps[:keep])
    s.versions.extend([policy_version] * keep)
    if reason == "stop" and keep == len(toks):
        s.finish_reason = "stop"
    elif params.stop and _stop_in_tail(tok, s.token_ids, params.stop):
        s.finish_reason = "stop"
    elif len(s.token_ids) >= params.max_new_tokens:
        s.finish_reason = "length"
    return keep


def _continue_round(engine: Any, groups: list[GroupState], params: SamplingParams, target_groups: int,
                    chunk_tokens: int, policy_version: int, gen: torch.Generator, counts: _Round) -> bool:
    """Continue every unfinished sample by one chunk, batch by batch, stopping as soon as
    ``target_groups`` groups are complete; False when nothing was left to continue."""
    active = [(g, s) for g in groups for s in g.samples if not s.finished]
    if not active:
        return False
    counts.rounds += 1
    batch_size = max(1, int(getattr(engine, "max_batch_sequences", 64)))
    for start in range(0, len(active), batch_size):
        part = active[start : start + batch_size]
        budget = [params.max_new_tokens - len(s.token_ids) for _, s in part]
        p = params.model_copy(update={"max_new_tokens": min(chunk_tokens, max(budget))})
        results = engine.sample_continuations([g.prompt_token_ids + s.token_ids for g, s in part], p, gen)
        counts.engine_calls += 1
        for (_g, s), room, res in zip(part, budget, results):
            counts.new_tokens += _extend(s, room, res, policy_version, params, engine.tokenizer)
        if sum(g.complete for g in groups) >= target_groups:
            break
    return True


def _stats(done: list[GroupState], buffer: RolloutBuffer, carried: tuple[int, int], fresh: int, dropped: int,
           counts: _Round, policy_version: int, seconds: float) -> dict[str, float]:
    """``carried``: the groups and tokens taken from the buffer at the start."""
    out_tokens = sum(len(s.versions) for g in done for s in g.samples)
    stale_tokens = sum(v < policy_version for g in done for s in g.samples for v in s.versions)
    versions = [v for g in done for s in g.samples for v in s.versions]
    return {
        "partial/complete_groups": float(len(done)),
        "partial/carried_groups": float(carried[0]),
        "partial/carried_tokens": float(carried[1]),
        "partial/new_groups": float(fresh),
        "partial/buffered_groups": float(len(buffer)),
        "partial/buffered_samples": float(buffer.num_samples),
        "partial/buffered_unfinished": float(buffer.num_unfinished),
        "partial/dropped_samples": float(dropped),
        "partial/tokens_generated": float(counts.new_tokens),
        "partial/batch_tokens": float(out_tokens),
        "partial/stale_token_frac": stale_tokens / max(1, out_tokens),
        "partial/max_staleness": float(policy_version - min(versions)) if versions else 0.0,
        "partial/rounds": float(counts.rounds),
        "partial/engine_calls": float(counts.engine_calls),
        "partial/seconds": seconds,
    }


def generate_with_partial(
    engine: Any,
    rows: list[dict],
    group_size: int,
    params: SamplingParams,
    target_groups: int,
    buffer: RolloutBuffer,
    policy_version: int,
    messages_fn: Callable[[dict], list[Message]],
    cfg: PartialRolloutConfig | None = None,
) -> tuple[list[CompleteGroup], dict[str, float]]:
    """Return ``target_groups`` complete groups (fewer only if every candidate finished) and stats.

    ``rows`` are candidate new prompts in priority order; rows already in the buffer are
    skipped, and only ``ceil(target_groups * over_provision) - len(buffer)`` are started.
    Every sample is limited to ``params.max_new_tokens`` response tokens in total, across
    steps. Sampling is seeded from ``params.seed``; the result is deterministic given the
    inputs (engine weights, buffer, rows, params).
    """
    if cfg is None:
        cfg = PartialRolloutConfig.model_validate({"enabled": True, "max_buffer": buffer.max_buffer})
    buffer.max_buffer = cfg.max_buffer  # the config is authoritative when given
    t0 = time.perf_counter()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(params.seed if params.seed is not None else torch.seed() % (2**63))

    carried = (len(buffer.groups), sum(g.generated_tokens for g in buffer.groups))
    groups, fresh = _start_groups(engine, rows, group_size, math.ceil(target_groups * cfg.over_provision), buffer,
                                  policy_version, messages_fn)
    # A sample whose budget is already spent (the length schedule shrank) is finished as truncated.
    for g in groups:
        for s in g.samples:
            if not s.finished and len(s.token_ids) >= params.max_new_tokens:
                s.finish_reason = "length"

    counts = _Round()
    while sum(g.complete for g in groups) < target_groups:
        if not _continue_round(engine, groups, params, target_groups, cfg.chunk_tokens, policy_version, gen, counts):
            break

    done = [g for g in groups if g.complete][:target_groups]
    done_ids = {id(g) for g in done}
    # Groups on which nothing was generated yet are plain prompts: cheaper to resample later.
    dropped = buffer.put([g for g in groups if id(g) not in done_ids and g.generated_tokens > 0])
    out = [CompleteGroup(g.row, g.prompt_token_ids, [_to_sample(i, s, engine.tokenizer) for s in g.samples])
           for i, g in enumerate(done)]
    return out, _stats(done, buffer, carried, fresh, dropped, counts, policy_version, time.perf_counter() - t0)
