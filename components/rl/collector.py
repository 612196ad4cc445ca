"""Rollout collection: which prompts, how many samples each, engine calls, refills, scoring.

``Collector.collect(step)`` returns a ``RolloutBatch``: the complete groups to train on (each
``(row, prompt_token_ids, samples)``), their rewards, and the step's generation figures. Every
random draw is seeded from (seed, step, attempt), so a resumed run collects the same rollouts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from components.difficulty.online import OnlineTracker, allocate_rollouts, thompson_pick
from components.engines.base import Sample, SamplingParams
from components.prompts import messages_for
from components.rl.advantages import zero_variance_groups
from components.rl.config import RLConfig
from components.rl.env_rollouts import episode_figures, run_groups
from components.rl.length import max_new_tokens_at
from components.rl.partial import CompleteGroup, RolloutBuffer, generate_with_partial
from components.scoring import RewardScorer


class PromptSampler:
    """Uniform (selection-weighted) or Thompson sampling over the training prompts."""

    def __init__(self, rows: list[dict], weights: list[float] | None, mode: str,
                 tracker: OnlineTracker | None = None, seed: int = 0) -> None:
        self.rows = rows
        w = np.asarray(weights if weights is not None else [1.0] * len(rows), dtype=np.float64)
        self.p = w / w.sum()
        self.mode = mode
        self.tracker = tracker
        self.seed = seed

    def sample(self, step: int, k: int, attempt: int = 0, exclude: set[int] | None = None) -> list[int]:
        # The generator is seeded per (step, attempt) so a resumed run draws the same batch.
        rng = np.random.default_rng([self.seed, step, attempt])
        candidates = [i for i in range(len(self.rows)) if not exclude or i not in exclude]
        if not candidates:
            return []
        k = min(k, len(candidates))
        if self.mode == "thompson" and self.tracker is not None:
            ids = [self.rows[i]["id"] for i in candidates]
            chosen = thompson_pick(self.tracker, ids, k, rng)
            index = {self.rows[i]["id"]: i for i in candidates}
            return [index[c] for c in chosen]
        p = self.p[candidates]
        p = p / p.sum()
        return [candidates[i] for i in rng.choice(len(candidates), size=k, replace=False, p=p)]


def make_tracker(difficulty: list | None, decay: float) -> OnlineTracker:
    """The online pass-rate tracker, started from the offline difficulty estimate when there is one."""
    if difficulty:
        return OnlineTracker.from_records(difficulty, decay=decay)
    return OnlineTracker(decay=decay)


def group_sizes(rows: list[dict], cfg: RLConfig, tracker: OnlineTracker) -> list[int]:
    """Rollouts per prompt: a constant group size, or DARS allocation of the same total budget
    towards hard-but-solvable prompts (by the online posterior)."""
    if cfg.rollout_allocation != "dars":
        return [cfg.group_size] * len(rows)
    return allocate_rollouts([tracker.posterior(r["id"]) for r in rows], total=len(rows) * cfg.group_size,
                             min_per_prompt=2, max_per_prompt=2 * cfg.group_size)


@dataclass
class RolloutBatch:
    """What one step collected: complete groups (in training order) and their rewards."""

    step: int
    budget: int  # max new tokens this step
    groups: list[CompleteGroup] = field(default_factory=list)
    rewards: list[list[float]] = field(default_factory=list)
    groups_seen: int = 0  # groups generated, including those dynamic sampling dropped
    zero_variance_seen: int = 0
    gen_seconds: float = 0.0
    gen_tokens: int = 0
    score_seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)  # partial-rollout and environment figures

    @property
    def samples(self) -> list[Sample]:
        return [s for g in self.groups for s in g.samples]


def _zero_variance(rewards: list[list[float]]) -> list[bool]:
    return [bool(zero_variance_groups(torch.tensor([g]))[0]) for g in rewards]


class Collector:
    """Collects one step's rollouts from ``engine`` with the prompts ``sampler`` draws."""

    def __init__(self, cfg: RLConfig, engine: Any, sampler: PromptSampler, scorer: RewardScorer,
                 tracker: OnlineTracker, buffer: RolloutBuffer | None = None) -> None:
        self.cfg, self.engine, self.sampler, self.scorer = cfg, engine, sampler, scorer
        self.tracker, self.buffer = tracker, buffer

    def sampling_params(self, step: int) -> SamplingParams:
        cfg = self.cfg
        budget = max_new_tokens_at(step, cfg.length_schedule) if cfg.length_schedule else cfg.max_new_tokens
        return SamplingParams.model_validate({"temperature": cfg.temperature, "top_p": cfg.top_p,
                                              "max_new_tokens": budget, "seed": cfg.seed * 100003 + step})

    def collect(self, step: int) -> RolloutBatch:
        params = self.sampling_params(step)
        out = RolloutBatch(step=step, budget=params.max_new_tokens)
        if self.cfg.partial.enabled and self.buffer is not None:
            self._collect_partial(out, params, self.buffer)
        else:
            self._collect_rounds(out, params)
        if not out.groups:
            raise RuntimeError(f"step {step}: no complete groups were generated")
        out.extra.update(episode_figures(out.samples))  # the trained episodes
        return out

    def _score(self, out: RolloutBatch, rows: list[dict], groups: list[list[Sample]]) -> list[list[float]]:
        """Rewards per group; the online tracker sees every scored sample."""
        ts = time.perf_counter()
        rewards = [[s.reward if s.reward is not None else self.scorer(r, s.text) for s in g]
                   for r, g in zip(rows, groups)]
        out.score_seconds += time.perf_counter() - ts
        self.tracker.update([r["id"] for r, g in zip(rows, groups) for _ in g], [x for g in rewards for x in g])
        return rewards

    def _collect_partial(self, out: RolloutBatch, params: SamplingParams, buffer: RolloutBuffer) -> None:
        """APRIL: over-provision, stop at the target number of complete groups, buffer the rest."""
        cfg = self.cfg
        want = math.ceil(cfg.prompts_per_step * cfg.partial.over_provision)
        held = buffer.row_ids()
        skip = {i for i, r in enumerate(self.sampler.rows) if str(r["id"]) in held}
        rows = [self.sampler.rows[i] for i in self.sampler.sample(out.step, want, 0, skip)]
        groups, stats = generate_with_partial(self.engine, rows, cfg.group_size, params, cfg.prompts_per_step,
                                              buffer, self.engine.policy_version, messages_for, cfg.partial)
        out.rewards = self._score(out, [g.row for g in groups], [g.samples for g in groups])
        out.groups = list(groups)
        out.extra = stats
        out.gen_seconds, out.gen_tokens = stats.get("partial/seconds", 0.0), int(stats.get("partial/tokens_generated", 0))
        zv = _zero_variance(out.rewards)
        out.zero_variance_seen, out.groups_seen = sum(zv), len(zv)

    def _collect_rounds(self, out: RolloutBatch, params: SamplingParams) -> None:
        """One round, or with dynamic sampling up to ``max_refill_rounds`` more that replace the
        zero-variance groups with fresh prompts (the last round keeps whatever it gets)."""
        cfg = self.cfg
        last = cfg.max_refill_rounds if cfg.dynamic_sampling else 0
        exclude: set[int] = set()
        for attempt in range(last + 1):
            need = cfg.prompts_per_step - len(out.groups)
            if need <= 0:
                break
            idx = self.sampler.sample(out.step, need, attempt, exclude)
            if not idx:
                break
            exclude.update(idx)
            self._one_round(out, [self.sampler.rows[i] for i in idx],
                            params.model_copy(update={"seed": (params.seed or 0) + 7919 * attempt}),
                            keep_zero_variance=not cfg.dynamic_sampling or attempt == last)

    def _one_round(self, out: RolloutBatch, rows: list[dict], params: SamplingParams, keep_zero_variance: bool) -> None:
        sizes = group_sizes(rows, self.cfg, self.tracker)
        rows, sizes = [r for r, n in zip(rows, sizes) if n > 0], [n for n in sizes if n > 0]
        groups, pids = self._generate(out, rows, sizes, params)
        rewards = self._score(out, rows, groups)
        zv = _zero_variance(rewards)
        out.zero_variance_seen += sum(zv)
        out.groups_seen += len(zv)
        for r, g, p, rw, z in zip(rows, groups, pids, rewards, zv):
            if z and not keep_zero_variance:
                continue
            out.groups.append(CompleteGroup(r, p, g))
            out.rewards.append(rw)

    def _generate(self, out: RolloutBatch, rows: list[dict], sizes: list[int],
                  params: SamplingParams) -> tuple[list[list[Sample]], list[list[int]]]:
        """One generate call per distinct group size; returns each row's samples and prompt ids."""
        if self.cfg.environment is not None:
            return self._episodes(out, rows, sizes, params)
        by_n: dict[int, list[int]] = {}
        for k, n in enumerate(sizes):
            by_n.setdefault(n, []).append(k)
        groups: list[list[Sample]] = [[] for _ in rows]
        pids: list[list[int]] = [[] for _ in rows]
        for n, members in sorted(by_n.items()):
            p = params if len(by_n) == 1 else params.model_copy(update={"seed": (params.seed or 0) + 31 * n})
            b = self.engine.generate([messages_for(rows[k]) for k in members], n, p)
            for j, k in enumerate(members):
                groups[k], pids[k] = b.groups[j], b.prompt_token_ids[j]
            out.gen_seconds += b.seconds
            out.gen_tokens += b.generated_tokens
        return groups, pids

    def _episodes(self, out: RolloutBatch, rows: list[dict], sizes: list[int],
                  params: SamplingParams) -> tuple[list[list[Sample]], list[list[int]]]:
        """Multi-turn episodes through ``rl_train.environment``; their figures go to ``out.extra``."""
        assert self.cfg.environment is not None
        groups, pids, seconds = run_groups(self.engine, self.cfg.environment, rows, sizes, params)
        out.gen_seconds += seconds
        out.gen_tokens += sum(sum(s.loss_mask or []) for g in groups for s in g)
        return groups, pids
