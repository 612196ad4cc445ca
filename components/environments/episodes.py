"""Multi-turn episodes over the engine's token-level continuation API.

``run_episodes`` drives a batch of episodes together: every round it asks the engine for one
continuation of each live episode (``sample_continuations(seqs, params, gen)``, with the stop
string ``</tool_call>`` added), parses the turn, runs its tool calls through the environment,
appends the tool-result tokens exactly as the chat template renders them, and continues until
the environment says done or a limit ends the episode.

Per episode the result holds the token ids after the prompt, a loss mask (1 = sampled by the
model, 0 = tool output and template tokens), the engine's log-prob of each token (0.0 where the
mask is 0), the policy version of each token (-1 where the mask is 0), the turns as chat
messages (readable transcripts), the reward, the tool-call counts and the end reason:
``done`` (the model answered without a tool call), ``max_turns`` (it still called a tool on its
last allowed turn), ``max_tokens`` (the token budget ran out), ``length`` (one turn hit the
sampling ``max_new_tokens``; with ``grade_truncated`` such a turn is graded as an answer instead)
or ``tool_errors``. An episode ended by a limit gets reward 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from components.engines.base import SamplingParams
from components.environments.base import TOOL_CALL_END, TOOL_CALL_RE, EndReason, Environment, Message
from components.environments.chat import prompt_ids, tool_turn_ids


class ContinuationEngine(Protocol):
    tokenizer: Any
    policy_version: int

    def sample_continuations(self, seqs: list[list[int]], params: SamplingParams,
                             gen: torch.Generator) -> list[tuple[list[int], list[float], str]]:
        ...


@dataclass
class EpisodeResult:
    prompt_ids: list[int]
    tools: list[dict[str, Any]]
    turns: list[Message]
    token_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    reward: float = 0.0
    end_reason: EndReason | None = None
    assistant_turns: int = 0
    metrics: dict[str, int] = field(default_factory=dict)

    @property
    def tool_calls(self) -> int:
        return int(self.metrics.get("tool_calls", 0))

    @property
    def model_tokens(self) -> int:
        return sum(self.loss_mask)

    def add(self, ids: list[int], logprobs: list[float] | None, version: int) -> None:
        """Append tokens: the model's own (with log-probs) or, with ``logprobs=None``, tool/template tokens."""
        own = logprobs is not None
        self.token_ids += ids
        self.loss_mask += [1 if own else 0] * len(ids)
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)
        self.versions += [version if own else -1] * len(ids)


def _stop_params(params: SamplingParams, max_new: int) -> SamplingParams:
    stops = list(params.stop) + ([TOOL_CALL_END] if TOOL_CALL_END not in params.stop else [])
    return params.model_copy(update={"stop": stops, "max_new_tokens": max_new})


def _budget(env: Environment, ep: EpisodeResult, params: SamplingParams) -> int:
    return min(params.max_new_tokens, env.config.max_total_tokens - len(ep.token_ids))


def _end(ep: EpisodeResult, env: Environment, reason: EndReason, reward: float = 0.0) -> None:
    ep.end_reason, ep.reward = reason, reward
    ep.metrics = dict(env.metrics)


def _after_turn(engine: ContinuationEngine, env: Environment, ep: EpisodeResult, text: str, reason: str) -> None:
    """Score or continue one episode after its assistant turn ``text`` (finish ``reason``)."""
    cfg = env.config
    ep.turns.append({"role": "assistant", "content": text})
    ep.assistant_turns += 1
    has_call = TOOL_CALL_RE.search(text) is not None
    out_of_tokens = len(ep.token_ids) >= cfg.max_total_tokens
    if reason != "stop" and not has_call and (out_of_tokens or not cfg.grade_truncated):
        _end(ep, env, "max_tokens" if out_of_tokens else "length")
        return
    if has_call and ep.assistant_turns >= cfg.max_turns:
        _end(ep, env, "max_turns")
        return
    res = env.step(text)
    ep.turns += res.messages
    if res.done:
        _end(ep, env, res.end_reason or "done", res.reward)
        return
    ids = tool_turn_ids(engine.tokenizer, res.messages)
    if len(ep.token_ids) + len(ids) >= cfg.max_total_tokens:
        _end(ep, env, "max_tokens")
        return
    ep.add(ids, None, engine.policy_version)


def run_episodes(engine: ContinuationEngine, envs: list[Environment], rows: list[dict[str, Any]],
                 params: SamplingParams, gen: torch.Generator | None = None) -> list[EpisodeResult]:
    """Run one episode per (environment instance, row) pair to its end; results in input order."""
    if len(envs) != len(rows):
        raise ValueError(f"{len(envs)} environments for {len(rows)} rows")
    if gen is None:
        gen = torch.Generator().manual_seed(params.seed if params.seed is not None else torch.seed() % (2**63))
    eps = []
    for env, row in zip(envs, rows):
        obs = env.reset(row)
        eps.append(EpisodeResult(prompt_ids(engine.tokenizer, obs.messages, obs.tools, env.tool_prompt),
                                 obs.tools, list(obs.messages)))
    live = list(range(len(eps)))
    while live:
        by_budget: dict[int, list[int]] = {}
        for i in live:
            by_budget.setdefault(_budget(envs[i], eps[i], params), []).append(i)
        for budget, idx in sorted(by_budget.items()):
            outs = engine.sample_continuations([eps[i].prompt_ids + eps[i].token_ids for i in idx],
                                               _stop_params(params, budget), gen)
            version = engine.policy_version
            for i, (toks, lps, reason) in zip(idx, outs):
                eps[i].add(toks, lps, version)
                text = engine.tokenizer.decode(toks, skip_special_tokens=True)
                _after_turn(engine, envs[i], eps[i], text, reason)
        live = [i for i in live if eps[i].end_reason is None]
    return eps
