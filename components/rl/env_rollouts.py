"""Rollouts through an environment (``rl_train.environment``): multi-turn episodes as samples.

Each group's ``n`` samples are ``n`` episodes of a fresh environment instance on the same row
(``components.environments.episodes.run_episodes``, one batched run for the whole round). A
sample's ``token_ids`` are every token after the prompt (the model's turns, the tool results and
the template tokens between them), its ``loss_mask`` marks the model's own tokens, its reward is
the environment's and its ``turns`` are the chat messages (the readable transcript).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import torch

from components.engines.base import Sample, SamplingParams
from components.environments import EnvironmentSpec, make_environment
from components.environments.base import Message
from components.environments.chat import template_handles_tools, with_tool_prompt
from components.environments.episodes import EpisodeResult, run_episodes


def shown_turns(ep: EpisodeResult, tokenizer: Any, tool_prompt: str | None) -> list[Message]:
    """The turns as the model saw them: with the tool block in the system message unless the chat
    template renders the tools itself."""
    if template_handles_tools(tokenizer):
        return [dict(t) for t in ep.turns]
    return with_tool_prompt(ep.turns, ep.tools, tool_prompt)


def episode_sample(ep: EpisodeResult, prompt_index: int, sample_index: int, turns: list[Message]) -> Sample:
    last = next((t["content"] for t in reversed(ep.turns) if t["role"] == "assistant"), "")
    return Sample(
        prompt_index=prompt_index, sample_index=sample_index, token_ids=list(ep.token_ids),
        logprobs=list(ep.logprobs), text=last, finish_reason="stop" if ep.end_reason == "done" else "length",
        versions=list(ep.versions), loss_mask=list(ep.loss_mask), turns=turns,
        reward=float(ep.reward),
        episode={"end_reason": ep.end_reason, "assistant_turns": ep.assistant_turns, **ep.metrics},
    )


def run_groups(engine: Any, spec: EnvironmentSpec, rows: list[dict], sizes: list[int], params: SamplingParams
               ) -> tuple[list[list[Sample]], list[list[int]], float]:
    """``sizes[k]`` episodes of ``rows[k]``; returns the groups, each row's prompt ids and the seconds."""
    t0 = time.perf_counter()
    limits = spec.limits()
    flat = [(k, j) for k, n in enumerate(sizes) for j in range(n)]
    envs = [make_environment(spec.name, limits) for _ in flat]
    gen = torch.Generator().manual_seed(params.seed if params.seed is not None else 0)
    eps = run_episodes(engine, envs, [rows[k] for k, _ in flat], params, gen)
    groups: list[list[Sample]] = [[] for _ in rows]
    pids: list[list[int]] = [[] for _ in rows]
    for (k, j), ep, env in zip(flat, eps, envs):
        groups[k].append(episode_sample(ep, k, j, shown_turns(ep, engine.tokenizer, env.tool_prompt)))
        pids[k] = ep.prompt_ids
    return groups, pids, time.perf_counter() - t0


def episode_figures(samples: list[Sample]) -> dict[str, float]:
    """The step's environment figures: tool-call rate, calls and turns per episode, masked tokens,
    failed tool calls and end reasons (shares of the episodes)."""
    eps = [s for s in samples if s.episode is not None]
    if not eps:
        return {}
    n = len(eps)
    calls = [int(s.episode.get("tool_calls", 0)) for s in eps if s.episode is not None]
    masks = [s.loss_mask or [] for s in eps]
    out = {
        "env/tool_call_rate": sum(c > 0 for c in calls) / n,
        "env/tool_calls_mean": sum(calls) / n,
        "env/turns_mean": sum(int(s.episode.get("assistant_turns", 0)) for s in eps if s.episode) / n,
        "env/model_tokens": float(sum(sum(m) for m in masks)),
        "env/masked_tokens": float(sum(len(m) - sum(m) for m in masks)),
        "env/tool_failures": float(sum(v for s in eps if s.episode for k, v in s.episode.items()
                                       if k.startswith("tool_fail/"))),
    }
    ends = Counter(str(s.episode.get("end_reason")) for s in eps if s.episode)
    out.update({f"env/end_{k}": v / n for k, v in sorted(ends.items())})
    return out
