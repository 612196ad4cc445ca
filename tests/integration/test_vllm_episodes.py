"""Multi-turn RL rollouts from a real vLLM server: the collector's calculator episodes on
``VLLMEngine`` (token-id continuations on ``/v1/completions``), the tool tokens masked out of the
loss, and the trainer's log-probs of the model's own tokens equal to vLLM's.

A tiny random Llama (the character-level one vLLM serves in the other integration tests) is first
taught one calculator episode, a tool call then the answer, by gradient steps on its model tokens,
so that sampling from the server (at temperature 0.3: the call is 84 characters) really produces
tool calls.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from teaching import short_calculator, teach_episode

from components.difficulty.online import OnlineTracker
from components.engines.vllm_engine import VLLMEngine
from components.environments.arithmetic import calculator
from components.environments.builtin import same_number
from components.environments.chat import tool_turn_ids
from components.models import load_model, load_tokenizer
from components.rl.collector import Collector, PromptSampler
from components.rl.config import RLConfig
from components.rl.learner import Learner, advantages, train_batch
from components.scoring import RewardScorer

pytestmark = pytest.mark.vllm

ENV = "test_vllm_short_calculator"
ROW = {"id": "q1", "prompt": "What is 12 * 4?", "answer": "48", "task": "numeric", "meta": "{}"}
CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "12 * 4"}}</tool_call>'
ANSWER = "48"


ShortCalculator = short_calculator(ENV, "Tools: {tools}")


@pytest.fixture(scope="module")
def taught_dir(tiny_models, tmp_path_factory) -> Path:
    """The tiny model after learning the two-turn episode, saved for the server."""
    tok, model = load_tokenizer(tiny_models["v1"]), load_model(tiny_models["v1"])
    teach_episode(model, tok, ShortCalculator, ROW, CALL, ANSWER, steps=1500, lr=3e-3)
    out = tmp_path_factory.mktemp("taught")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def collected(vllm_venv, taught_dir, make_server_cfg):
    tok = load_tokenizer(taught_dir)
    cfg = RLConfig.model_validate({
        "prompts_per_step": 1, "group_size": 4, "max_new_tokens": 100, "temperature": 0.3, "lr": 1e-3,
        "minibatch_size": 8, "micro_batch_size": 8, "seed": 3,
        "environment": {"name": ENV, "max_total_tokens": 136, "max_turns": 3}})  # 369 prompt tokens: < 512
    engine = VLLMEngine(taught_dir, make_server_cfg(served_model_name="taught", max_model_len=512), tok)
    try:
        sampler = PromptSampler([ROW], None, "uniform", seed=cfg.seed)
        batch = Collector(cfg, engine, sampler, RewardScorer(), OnlineTracker()).collect(0)
        yield cfg, engine, batch, tok
    finally:
        engine.close()


def test_vllm_episodes_call_the_tool_and_mask_its_tokens(collected):
    cfg, _, batch, tok = collected
    samples = batch.samples
    assert len(samples) == cfg.group_size and all(s.turns and s.loss_mask is not None for s in samples)
    with_calls = [s for s in samples if s.episode and s.episode.get("tool_calls")]
    assert with_calls, [s.text for s in samples]
    assert batch.rewards[0] == [float(s.episode is not None and s.episode["end_reason"] == "done"
                                      and same_number(s.text, ROW["answer"])) for s in samples]
    results = [t["content"] for s in with_calls for t in s.turns or [] if t["role"] == "tool"]
    assert calculator("12 * 4") in results, results  # at least one call reached the calculator
    for s in with_calls:  # the masked tokens are exactly the tool turns as the chat template renders them
        masked = [t for t, m in zip(s.token_ids, s.loss_mask or []) if m == 0]
        tools = [t for t in s.turns or [] if t["role"] == "tool"]
        assert tools  # a malformed call gets an error message as its tool result, masked the same way
        if s.episode and s.episode["end_reason"] != "max_tokens":
            assert masked == [i for t in tools for i in tool_turn_ids(tok, [t])]


def test_trainer_logprobs_equal_vllms_on_the_models_own_tokens(collected, taught_dir):
    cfg, engine, batch, tok = collected
    model = load_model(taught_dir)
    tb = train_batch(batch, advantages(batch, cfg), tok.pad_token_id)
    assert float((tb.token_mask - tb.resp_mask).sum()) > 0  # tool tokens sit between the model's
    res = Learner(cfg, model).update(tb, [len(g.samples) for g in batch.groups], engine, 0)
    # fp32 on both sides, summed in different orders (vLLM's CPU attention vs ATen): about 1e-5
    # (test_vllm_rl); a mismatch on tool tokens would be of order 1 (they are not the model's).
    assert max(res.stats["logprob_mismatch_max"]) < 1e-3, res.stats
