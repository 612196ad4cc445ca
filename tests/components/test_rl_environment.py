"""The RL stage with ``rl_train.environment``: episodes in the collector, the loss mask in the batch.

A tiny random model is first taught one calculator episode (a tool call, then the answer) by a few
dozen gradient steps on its model tokens, so sampling really produces tool calls; the collector,
the batch builder and the learner then run as the RL stage runs them.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from teaching import short_calculator, teach_episode

from components.difficulty.online import OnlineTracker
from components.engines.base import Sample
from components.engines.transformers_engine import TransformersEngine
from components.environments.builtin import same_number
from components.environments.chat import tool_turn_ids
from components.models import load_model, load_tokenizer
from components.recipe import RecipeError, load_recipe
from components.rl.batch import build_batch, response_logprobs
from components.rl.collector import Collector, PromptSampler
from components.rl.config import RLConfig
from components.rl.learner import Learner, advantages, train_batch
from components.rl.losses import LossInputs, compute_loss
from components.rl.rollouts import rollout_records, transcripts_markdown
from components.scoring import RewardScorer

ENV = "test_rl_short_calculator"
ROW = {"id": "q1", "prompt": "What is 123 * 45?", "answer": str(123 * 45), "task": "numeric", "meta": "{}"}
CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "123 * 45"}}</tool_call>'
ANSWER = f"The answer is {123 * 45}."


ShortCalculator = short_calculator(ENV, "Tools:\n{tools}")


@pytest.fixture(scope="module")
def taught(tiny_model_dir):
    """The tiny model after learning the two-turn episode (greedy decoding reproduces it)."""
    tok, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir)
    teach_episode(model, tok, ShortCalculator, ROW, CALL, ANSWER)
    return model, tok


def _cfg(**kw) -> RLConfig:
    base = {"prompts_per_step": 1, "group_size": 4, "max_new_tokens": 120, "temperature": 0.7, "lr": 1e-3,
            "minibatch_size": 8, "micro_batch_size": 8, "seed": 3,
            "environment": {"name": ENV, "max_total_tokens": 300, "max_turns": 3}}
    return RLConfig.model_validate({**base, **kw})


def _collect(model, tok, cfg: RLConfig):
    engine = TransformersEngine(model, tok)
    sampler = PromptSampler([ROW], None, "uniform", seed=cfg.seed)
    return engine, Collector(cfg, engine, sampler, RewardScorer(), OnlineTracker()).collect(0)


@pytest.fixture(scope="module")
def collected(taught):
    model, tok = taught
    cfg = _cfg()
    engine, batch = _collect(model, tok, cfg)
    return cfg, engine, batch


def test_collector_runs_episodes_and_the_batch_masks_tool_tokens(taught, collected):
    _, tok = taught
    cfg, _, batch = collected
    samples = batch.samples
    assert len(samples) == cfg.group_size and all(s.turns and s.loss_mask is not None for s in samples)
    with_calls = [s for s in samples if s.episode and s.episode.get("tool_calls")]
    assert with_calls, "the taught policy should call the calculator"
    # Rewards are the environment's: 1 exactly when the episode ended with the product as its answer.
    assert batch.rewards[0] == [float(s.episode is not None and s.episode["end_reason"] == "done"
                                      and same_number(s.text, ROW["answer"])) for s in samples]
    tb = train_batch(batch, advantages(batch, cfg), tok.pad_token_id)
    for i, s in enumerate(samples):
        n = len(s.token_ids)
        assert tb.resp_mask[i, :n].tolist() == [float(m) for m in s.loss_mask or []]
        assert tb.token_mask[i, :n].eq(1).all() and tb.token_mask[i, n:].eq(0).all()
    for s in with_calls:  # the masked tokens are the tool turns, as the chat template renders them
        masked = [t for t, m in zip(s.token_ids, s.loss_mask or []) if m == 0]
        tool_msgs = [t for t in s.turns or [] if t["role"] == "tool"]
        if s.episode and s.episode["end_reason"] != "max_tokens":
            assert masked == [i for t in tool_msgs for i in tool_turn_ids(tok, [t])]
    zeros = sum(len(s.loss_mask or []) - sum(s.loss_mask or []) for s in samples)
    assert batch.extra["env/masked_tokens"] == zeros > 0
    assert batch.extra["env/tool_call_rate"] == len(with_calls) / len(samples)


def test_tool_tokens_get_no_gradient(taught, collected):
    model, tok = taught
    cfg, _, batch = collected
    tb = train_batch(batch, advantages(batch, cfg), tok.pad_token_id)
    tb = dataclasses.replace(tb, advantages=torch.linspace(-1.0, 1.0, len(tb)))
    logp, ent = response_logprobs(model, tb, cfg.temperature, share_prompts=True)
    logp.retain_grad()
    out = compute_loss(LossInputs(logp, logp.detach(), tb.advantages, tb.resp_mask, entropy=ent,
                                  norm_len=cfg.max_new_tokens), cfg.loss)
    out.scaled.backward()
    tool = (tb.token_mask - tb.resp_mask).bool()
    assert bool(tool.any()) and logp.grad is not None
    assert logp.grad[tool].abs().max() == 0.0
    assert logp.grad[tb.resp_mask.bool()].abs().max() > 0.0
    model.zero_grad(set_to_none=True)


def test_what_tool_tokens_carry_changes_no_update(taught, collected):
    """Garbage engine log-probs and versions on the tool tokens give bit-identical updated weights."""
    model, tok = taught
    cfg, engine, batch = collected
    cfg = cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"tis_cap": 2.0})})
    tb = train_batch(batch, advantages(batch, cfg), tok.pad_token_id)
    tb = dataclasses.replace(tb, advantages=torch.linspace(-1.0, 1.0, len(tb)))
    tool = (tb.token_mask - tb.resp_mask).bool()
    noisy = dataclasses.replace(tb, engine_logp=tb.engine_logp.masked_fill(tool, -7.5),
                                versions=tb.versions.masked_fill(tool, 123))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    after = []
    for b in (tb, noisy):
        model.load_state_dict(start)
        Learner(cfg, model).update(b, [len(g.samples) for g in batch.groups], engine, 0)
        after.append({k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(start)
    assert any(not torch.equal(after[0][k], start[k]) for k in start)  # the update did change weights
    assert all(torch.equal(after[0][k], after[1][k]) for k in start)


def test_engine_and_trainer_logprobs_agree_on_multi_turn_rollouts(taught, collected):
    model, tok = taught
    cfg, engine, batch = collected
    tb = train_batch(batch, advantages(batch, cfg), tok.pad_token_id)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    res = Learner(cfg, model).update(tb, [len(g.samples) for g in batch.groups], engine, 0)
    model.load_state_dict(start)
    assert float((tb.token_mask - tb.resp_mask).sum()) > 0  # tool tokens sit between the model's
    assert max(res.stats["logprob_mismatch"]) < 1e-4 and max(res.stats["logprob_mismatch_max"]) < 1e-3


def test_rollouts_store_turns_and_transcripts_read_as_a_chat(collected):
    _, _, batch = collected
    recs = rollout_records(0, batch.groups, batch.rewards, 0)
    assert [json.loads(r["turns"]) for r in recs] == [s.turns for s in batch.samples]
    assert [r["loss_mask"] for r in recs] == [s.loss_mask for s in batch.samples]
    md = transcripts_markdown(recs, 2)
    assert md.count("## prompt q1") == 2 and "**tool**" in md and "**assistant**" in md and "**system**" in md
    first = next(r for r in recs if r["tool_calls"])  # episodes with tool calls are shown first
    assert all(t["content"] in md for t in json.loads(first["turns"])) and ROW["prompt"] in md


def test_single_turn_samples_build_the_batch_and_rollouts_as_before(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    prompts, responses = [[5, 6, 7], [5, 6]], [[8, 9], [10, 11, 12]]
    lps, vers = [[-0.5, -0.25], [-1.0, -2.0, -3.0]], [[0, 0], [0, 0, 0]]
    tb = build_batch(prompts, responses, lps, vers, [1.0, -1.0], tok.pad_token_id)
    assert torch.equal(tb.token_mask, tb.resp_mask)
    assert tb.resp_mask.sum(-1).tolist() == [float(len(r)) for r in responses]
    explicit = build_batch(prompts, responses, lps, vers, [1.0, -1.0], tok.pad_token_id,
                           [[1] * len(r) for r in responses])
    assert all(torch.equal(getattr(tb, f), getattr(explicit, f)) for f in tb.__dataclass_fields__)
    s = Sample(0, 0, [8, 9], [-0.5, -0.25], "hi", "stop", [0, 0])
    rec = rollout_records(0, [(ROW, prompts[0], [s])], [[1.0]], 0)[0]
    assert not {"turns", "loss_mask", "token_ids", "tool_calls"} & set(rec)


def test_recipe_refuses_partial_rollouts_with_an_environment_in_one_line():
    with pytest.raises(RecipeError) as e:
        load_recipe("smoke-tools", ["rl_train.partial.enabled=true", "rl_train.loss.tis_cap=2.0"])
    assert "partial.enabled cannot be combined with environment" in str(e.value)
    with pytest.raises(RecipeError) as e:
        load_recipe("smoke-tools", ["rl_train.environment.name=no-such-env"])
    assert "no-such-env" in str(e.value) and "calculator" in str(e.value)


def test_evaluation_answers_through_the_environment(taught, tmp_path):
    """Greedy pass@1 through the episode (the taught model calls the calculator, then answers) and
    the tool-call rate; single-turn evaluation of the same model has no tool-call rate."""
    from components.evaluation.config import EvaluateConfig
    from components.stages.evaluate import evaluate_model

    model, tok = taught
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    env = {"name": ENV, "max_total_tokens": 300, "max_turns": 3}
    base = {"k": 1, "max_new_tokens": 120, "temperature": 0.7, "determinism_check": False}
    with_env = evaluate_model("taught", tmp_path / "m", [ROW], EvaluateConfig.model_validate({**base, "environment": env}),
                              "cpu", torch.float32)
    greedy_episode = run_episodes_greedy(model, tok)
    assert with_env.greedy_pass1 == greedy_episode.reward == 1.0
    assert with_env.tool_call_rate == float(greedy_episode.tool_calls > 0) == 1.0
    assert with_env.tool_call_rate_sampled is not None and 0.0 <= with_env.tool_call_rate_sampled <= 1.0
    plain = evaluate_model("taught", tmp_path / "m", [ROW], EvaluateConfig.model_validate(base), "cpu", torch.float32)
    assert plain.tool_call_rate is None and plain.tool_call_rate_sampled is None


def run_episodes_greedy(model, tok):
    from components.engines.base import SamplingParams
    from components.environments.episodes import run_episodes

    cfg = _cfg().environment
    assert cfg is not None
    return run_episodes(TransformersEngine(model, tok), [ShortCalculator(cfg.limits())], [ROW],
                        SamplingParams(temperature=0, max_new_tokens=120))[0]


def test_difficulty_and_evaluation_use_the_rl_environment_unless_they_name_their_own():
    r = load_recipe("smoke-tools")
    assert r.rl_train.environment is not None
    assert r.estimate_difficulty.environment == r.evaluate.environment == r.rl_train.environment
    own = load_recipe("smoke-tools", ["evaluate.environment.name=countdown"])
    assert own.evaluate.environment is not None and own.evaluate.environment.name == "countdown"
    assert load_recipe("smoke").evaluate.environment is None
