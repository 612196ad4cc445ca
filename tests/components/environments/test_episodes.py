"""Multi-turn episodes on a real (tiny) model and the real transformers engine.

The tiny random model is first taught one two-turn episode (a calculator call, then the answer)
by a few dozen gradient steps on the model tokens of that episode, so greedy decoding really
emits a tool call; the episode runner then has to reproduce that episode token for token.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch
from teaching import teach

from components.engines.base import SamplingParams
from components.engines.transformers_engine import TransformersEngine
from components.environments import EnvironmentConfig, Tool, register_environment
from components.environments.arithmetic import calculator
from components.environments.builtin import CalculatorEnvironment
from components.environments.chat import prompt_ids, tool_turn_ids, with_tool_prompt
from components.environments.episodes import run_episodes
from components.models import load_model, load_tokenizer
from components.rl.batch import build_batch, response_logprobs

ROW = {"prompt": "What is 123 * 45?", "answer": str(123 * 45)}
CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "123 * 45"}}</tool_call>'
ANSWER = f"The answer is {123 * 45}."
GREEDY = SamplingParams(temperature=0, max_new_tokens=120)


@register_environment("test_short_calculator")
class ShortCalculator(CalculatorEnvironment):
    """The calculator environment with a short tool prompt (short sequences keep training fast)."""

    tool_prompt = "Tools:\n{tools}"

    def tools(self) -> list[Tool]:
        return [Tool.of(calculator)]


def _slow(expression: str) -> str:
    time.sleep(30)
    return "never"


def _broken(expression: str) -> str:
    raise RuntimeError("tool crashed")


class HangingCalculator(ShortCalculator):
    """Same schema (so the same prompt), but the function never returns in time."""

    def tools(self) -> list[Tool]:
        return [Tool(fn=_slow, schema=Tool.of(calculator).schema)]


class RaisingCalculator(ShortCalculator):
    def tools(self) -> list[Tool]:
        return [Tool(fn=_broken, schema=Tool.of(calculator).schema)]


def _script(tok):
    """Prompt ids and the episode's (ids, is_model) segments as the runner must produce them."""
    obs = ShortCalculator().reset(ROW)
    prompt = prompt_ids(tok, obs.messages, obs.tools, ShortCalculator.tool_prompt)
    t1 = tok(CALL, add_special_tokens=False)["input_ids"]
    delta = tool_turn_ids(tok, [{"role": "tool", "content": calculator("123 * 45")}])
    t2 = tok(ANSWER, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return prompt, [(t1, 1), (delta, 0), (t2, 1)]


@pytest.fixture(scope="module")
def taught(tiny_model_dir):
    tok, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir)
    prompt, segs = _script(tok)
    ids = prompt + [t for s, _ in segs for t in s]
    mask = [0] * len(prompt) + [m for s, m in segs for _ in s]
    teach(model, ids, mask)
    return TransformersEngine(model, tok), prompt, segs


def test_tool_episode_tokens_mask_and_transcript(taught):
    eng, prompt, segs = taught
    ep = run_episodes(eng, [ShortCalculator()], [ROW], GREEDY)[0]
    assert ep.prompt_ids == prompt
    assert ep.token_ids == [t for s, _ in segs for t in s]
    assert ep.loss_mask == [m for s, m in segs for _ in s]  # tool/template tokens carry no gradient
    assert all(v == -1 for v, m in zip(ep.versions, ep.loss_mask) if m == 0)
    assert all(lp == 0.0 for lp, m in zip(ep.logprobs, ep.loss_mask) if m == 0)
    assert ep.reward == 1.0 and ep.end_reason == "done" and ep.tool_calls == 1 and ep.metrics["tool_ok"] == 1
    assert [t["role"] for t in ep.turns[-3:]] == ["assistant", "tool", "assistant"]
    assert ep.turns[-2]["content"] == ROW["answer"]
    # The whole sequence is what the chat template renders for the transcript (it adds only the
    # newline after the model's own end-of-turn token).
    msgs = with_tool_prompt(ep.turns[:-1] + [{"role": "assistant", "content": ANSWER}], ep.tools,
                            ShortCalculator.tool_prompt)
    rendered = eng.tokenizer.apply_chat_template(msgs, tokenize=False)
    full = eng.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert full[: len(prompt) + len(ep.token_ids)] == prompt + ep.token_ids
    assert eng.tokenizer.decode(full[len(prompt) + len(ep.token_ids):]) == "\n"


def test_trainer_logprobs_equal_engine_logprobs_on_model_tokens(taught):
    eng, _, _ = taught
    temp = 0.8
    eps = run_episodes(eng, [ShortCalculator() for _ in range(3)], [ROW] * 3,
                       SamplingParams(temperature=temp, max_new_tokens=120, seed=5))
    batch = build_batch([e.prompt_ids for e in eps], [e.token_ids for e in eps], [e.logprobs for e in eps],
                        [e.versions for e in eps], [0.0] * 3, pad_id=eng.tokenizer.pad_token_id)
    mask = torch.zeros_like(batch.resp_mask)
    for r, e in enumerate(eps):
        mask[r, : len(e.loss_mask)] = torch.tensor(e.loss_mask, dtype=mask.dtype)
    batch = dataclasses.replace(batch, resp_mask=mask)
    with torch.no_grad():
        trainer, _ = response_logprobs(eng.model, batch, temperature=temp)
    sel = mask.bool()
    assert int(sel.sum()) == sum(e.model_tokens for e in eps) and any(e.tool_calls for e in eps)
    assert torch.allclose(trainer[sel], batch.engine_logp[sel], atol=1e-4)
    for e in eps:  # and a plain forward of the full sequence
        with torch.no_grad():
            lp = torch.log_softmax(eng.model(input_ids=torch.tensor([e.prompt_ids + e.token_ids])).logits[0] / temp, -1)
        ref = [float(lp[len(e.prompt_ids) - 1 + j, t]) for j, t in enumerate(e.token_ids) if e.loss_mask[j]]
        got = [x for x, m in zip(e.logprobs, e.loss_mask) if m]
        assert torch.allclose(torch.tensor(got), torch.tensor(ref), atol=1e-4)


def test_turn_and_token_limits_end_episodes(taught):
    eng, _, segs = taught
    one_turn = run_episodes(eng, [ShortCalculator(EnvironmentConfig(max_turns=1))], [ROW], GREEDY)[0]
    assert one_turn.end_reason == "max_turns" and one_turn.reward == 0.0
    assert one_turn.tool_calls == 0 and one_turn.loss_mask == [1] * len(segs[0][0])  # the tool never ran
    budget = len(segs[0][0]) + 4  # the call fits, the tool output does not
    short = run_episodes(eng, [ShortCalculator(EnvironmentConfig(max_total_tokens=budget))], [ROW], GREEDY)[0]
    assert short.end_reason == "max_tokens" and len(short.token_ids) <= budget and short.reward == 0.0
    cut = run_episodes(eng, [ShortCalculator()], [ROW], GREEDY.model_copy(update={"max_new_tokens": 10}))[0]
    assert cut.end_reason == "length" and cut.token_ids == segs[0][0][:10]


def test_hanging_and_raising_tools_are_bounded_and_counted(taught):
    eng, _, segs = taught
    cfg = EnvironmentConfig(tool_timeout_s=0.3, max_tool_errors=1)
    threads = threading.active_count()
    t0 = time.perf_counter()
    hung, broke = run_episodes(eng, [HangingCalculator(cfg), RaisingCalculator(cfg)], [ROW, ROW], GREEDY)
    assert time.perf_counter() - t0 < 20
    assert hung.metrics["tool_fail/timeout"] == 1 and "timed out" in hung.turns[-1]["content"]
    assert broke.metrics["tool_fail/error"] == 1 and "tool crashed" in broke.turns[-1]["content"]
    for ep in (hung, broke):
        assert ep.end_reason == "tool_errors" and ep.reward == 0.0
        assert ep.token_ids == segs[0][0] and ep.loss_mask == [1] * len(segs[0][0])
    assert threading.active_count() <= threads + 1  # only the hung tool's daemon thread is left


def test_untrained_model_episodes_end_within_limits(tiny_model_dir):
    eng = TransformersEngine(load_model(tiny_model_dir), load_tokenizer(tiny_model_dir))
    cfg = EnvironmentConfig(max_total_tokens=12)
    eps = run_episodes(eng, [ShortCalculator(cfg) for _ in range(4)], [ROW] * 4,
                       SamplingParams(max_new_tokens=40, seed=2))
    for ep in eps:
        assert ep.end_reason in ("done", "max_tokens") and len(ep.token_ids) <= 12
        assert len(ep.token_ids) == len(ep.loss_mask) == len(ep.logprobs) == len(ep.versions)
        assert all(v == eng.policy_version for v in ep.versions)
