"""The transformers engine: shapes, log-probs equal a separate forward pass, seeded sampling."""

import pytest
import torch

from components.engines.base import SamplingParams
from components.engines.transformers_engine import TransformersEngine
from components.models import load_model, load_tokenizer

PROMPTS = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Hi"}]]


def _engine(d, **kw):
    return TransformersEngine(load_model(d), load_tokenizer(d), **kw)


@pytest.fixture(params=["mkl", "onednn-packed", "onednn"])
def linear_path(request, monkeypatch):
    """The engine's linear layers on MKL (``F.linear``) or, as on a real model, through oneDNN
    (``kernels.cpu_linear``; the tiny model's layers are below its size threshold, so it is
    lowered here), with weights packed for the batch or (few rows) unpacked; yields a list that
    counts the oneDNN calls."""
    from components.engines import transformers_engine
    from kernels import cpu_linear

    calls: list[int] = []
    if request.param == "mkl":
        monkeypatch.setenv("POSTTRAIN_ONEDNN_LINEAR", "0")
    else:
        monkeypatch.setattr(cpu_linear, "MIN_WEIGHT_NUMEL", 0)
        real = cpu_linear.onednn_linear
        monkeypatch.setattr(cpu_linear, "onednn_linear", lambda *a: calls.append(a[1].is_mkldnn) or real(*a))
        if request.param == "onednn":
            monkeypatch.setattr(transformers_engine, "PACK_MIN_ROWS", 10**6)
    yield request.param, calls
    assert (len(calls) > 0) == (request.param != "mkl")
    assert all(calls) if request.param == "onednn-packed" else not any(calls)  # packed weights are oneDNN tensors


def test_shapes_and_finish_reasons(tiny_model_dir):
    eng = _engine(tiny_model_dir, max_batch_sequences=3)  # forces several chunks
    out = eng.generate(PROMPTS, 3, SamplingParams(max_new_tokens=5, seed=1))
    assert len(out.groups) == 2 and all(len(g) == 3 for g in out.groups)
    for g in out.groups:
        for s in g:
            assert 1 <= len(s.token_ids) <= 5
            assert len(s.logprobs) == len(s.token_ids) == len(s.versions)
            assert all(lp <= 0 for lp in s.logprobs)
            assert s.finish_reason == ("length" if len(s.token_ids) == 5 else "stop")


def test_logprobs_match_separate_forward(tiny_model_dir, linear_path):
    eng = _engine(tiny_model_dir)
    temp = 0.7
    out = eng.generate(PROMPTS, 2, SamplingParams(max_new_tokens=6, temperature=temp, seed=3))
    model = eng.model
    for i, g in enumerate(out.groups):
        prompt = out.prompt_token_ids[i]
        for s in g:
            ids = torch.tensor([prompt + s.token_ids])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0].float() / temp
            lp = torch.log_softmax(logits, -1)
            ref = [float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(s.token_ids)]
            assert torch.allclose(torch.tensor(s.logprobs), torch.tensor(ref), atol=1e-4)


def test_seed_reproducible_and_greedy_deterministic(tiny_model_dir):
    eng = _engine(tiny_model_dir)
    p = SamplingParams(max_new_tokens=6, seed=11)
    a = eng.generate(PROMPTS, 2, p)
    b = eng.generate(PROMPTS, 2, p)
    assert [s.token_ids for g in a.groups for s in g] == [s.token_ids for g in b.groups for s in g]
    g1 = eng.generate(PROMPTS, 1, SamplingParams(max_new_tokens=6, temperature=0))
    g2 = eng.generate(PROMPTS, 1, SamplingParams(max_new_tokens=6, temperature=0, seed=99))
    assert [g[0].token_ids for g in g1.groups] == [g[0].token_ids for g in g2.groups]


def test_update_weights_changes_outputs_and_version(tiny_model_dir):
    eng = _engine(tiny_model_dir)
    p = SamplingParams(max_new_tokens=6, temperature=0)
    before = [g[0].token_ids for g in eng.generate(PROMPTS, 1, p).groups]
    sd = {k: torch.randn_like(v) for k, v in eng.model.state_dict().items()}
    eng.update_weights(sd, version=5)
    after = eng.generate(PROMPTS, 1, p)
    assert eng.policy_version == 5 and after.groups[0][0].versions[0] == 5
    assert [g[0].token_ids for g in after.groups] != before


def test_top_k_one_equals_greedy(tiny_model_dir):
    eng = _engine(tiny_model_dir)
    greedy = eng.generate(PROMPTS, 1, SamplingParams(max_new_tokens=5, temperature=0))
    topk = eng.generate(PROMPTS, 1, SamplingParams(max_new_tokens=5, temperature=1.0, top_k=1, seed=4))
    assert [g[0].token_ids for g in greedy.groups] == [g[0].token_ids for g in topk.groups]


def _hf_greedy(eng, prompt_ids, max_new):
    """HF ``model.generate`` (greedy) on the same left-padded prompts; each row cut after its first EOS."""
    pad = eng.tokenizer.pad_token_id
    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    with torch.no_grad():
        out = eng.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new,
                                 pad_token_id=pad, eos_token_id=sorted(eng.eos_ids))
    rows = []
    for r in out[:, width:].tolist():
        cut = next((k + 1 for k, t in enumerate(r) if t in eng.eos_ids), len(r))
        rows.append(r[:cut])
    return rows


def test_greedy_equals_hf_generate(tiny_model_dir, linear_path):
    """The sampling loop (shared-prefix prefill, finished rows dropped) against ``model.generate``."""
    eng = _engine(tiny_model_dir)
    prompts = PROMPTS + [[{"role": "user", "content": "Count from one to ten, slowly please."}]]
    out = eng.generate(prompts, 2, SamplingParams(max_new_tokens=12, temperature=0))
    ref = _hf_greedy(eng, out.prompt_token_ids, 12)
    assert [[s.token_ids for s in g] for g in out.groups] == [[r, r] for r in ref]


def test_finished_rows_leave_the_batch_without_changing_the_others(tiny_model_dir):
    """An EOS that ends some rows early: the rows still running decode exactly as they do alone."""
    eng = _engine(tiny_model_dir)
    p = SamplingParams(max_new_tokens=10, temperature=0)
    alone = [eng.generate([m], 1, p).groups[0][0].token_ids for m in PROMPTS]
    eos = alone[0][2]  # the third greedy token of the first prompt now ends it
    eng.eos_ids = {eos}
    together = eng.generate(PROMPTS, 1, p).groups
    first = together[0][0]
    assert first.token_ids == alone[0][: alone[0].index(eos) + 1] and first.finish_reason == "stop"
    second = alone[1][: alone[1].index(eos) + 1] if eos in alone[1] else alone[1]
    assert together[1][0].token_ids == second


def test_inverse_cdf_sampler_draws_the_filtered_distribution():
    from components.engines.transformers_engine import inverse_cdf_sample

    probs = torch.tensor([0.5, 0.0, 0.2, 0.3, 0.0])
    gen = torch.Generator().manual_seed(0)
    draws = 40_000
    u = torch.rand(draws, generator=gen, dtype=torch.float64)
    idx = inverse_cdf_sample(probs.expand(draws, -1), u)
    freq = torch.bincount(idx, minlength=5).double() / draws
    sigma = (probs.double() * (1 - probs.double()) / draws).sqrt()
    assert freq[1] == 0 and freq[4] == 0  # zero-probability tokens are never drawn
    assert bool(((freq - probs.double()).abs() <= 5 * sigma + 1e-12).all())
    # Unnormalised weights give the same draws as their normalised distribution.
    assert torch.equal(inverse_cdf_sample((3 * probs).expand(draws, -1), u), idx)


def test_two_level_sampler_matches_the_flat_inverse_cdf():
    """Blocks of the two-level inverse CDF (a vocabulary not divisible by the block size): the
    drawn token is the one a flat cdf over the whole row gives for the same uniform."""
    from components.engines.transformers_engine import inverse_cdf_sample

    gen = torch.Generator().manual_seed(1)
    w = torch.rand(64, 1000, generator=gen) ** 4
    w[:, 100:300] = 0.0  # whole empty blocks are skipped
    u = torch.rand(64, generator=gen, dtype=torch.float64)
    got = inverse_cdf_sample(w, u, block=64)
    cdf = w.double().cumsum(-1)
    flat = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1)
    assert torch.equal(got, flat)
    assert bool((w.gather(1, got[:, None]) > 0).all())


SHOTS = [{"role": "system", "content": "You answer arithmetic questions with one number."},
         {"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"},
         {"role": "user", "content": "What is 3 * 4?"}, {"role": "assistant", "content": "12"}]
FEW_SHOT = [SHOTS + [{"role": "user", "content": q}] for q in ("What is 7 + 8?", "Hi", "What is 19 - 4 - 2 - 1?")]


def test_common_prefix_is_forwarded_once_and_changes_nothing(tiny_model_dir, monkeypatch):
    """Few-shot prompts that share a long header: greedy equals ``model.generate``, sampled
    log-probs equal a separate forward, and both equal the engine without the shared prefix."""
    from components.engines import transformers_engine as te

    eng = _engine(tiny_model_dir)
    ids = eng.encode_prompts(FEW_SHOT)
    assert te.common_prefix_len(ids) >= te.MIN_COMMON_PREFIX + 20  # the header is shared
    greedy = eng.generate(FEW_SHOT, 2, SamplingParams(max_new_tokens=10, temperature=0))
    assert [[s.token_ids for s in g] for g in greedy.groups] == [[r, r] for r in _hf_greedy(eng, ids, 10)]
    p = SamplingParams(max_new_tokens=8, temperature=0.9, seed=5)
    shared = eng.generate(FEW_SHOT, 2, p)
    for i, g in enumerate(shared.groups):
        for s in g:
            with torch.no_grad():
                logits = eng.model(input_ids=torch.tensor([ids[i] + s.token_ids])).logits[0].float() / 0.9
            lp = torch.log_softmax(logits, -1)
            ref = [float(lp[len(ids[i]) - 1 + j, t]) for j, t in enumerate(s.token_ids)]
            assert torch.allclose(torch.tensor(s.logprobs), torch.tensor(ref), atol=1e-4)
    monkeypatch.setattr(te, "MIN_COMMON_PREFIX", 10**6)
    plain = eng.generate(FEW_SHOT, 2, p)
    assert [s.token_ids for g in plain.groups for s in g] == [s.token_ids for g in shared.groups for s in g]


def test_common_prefix_len_leaves_each_sequence_a_token():
    from components.engines.transformers_engine import common_prefix_len

    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert common_prefix_len([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter one keeps its last token
    assert common_prefix_len([[1, 2], [3, 4]]) == 0 and common_prefix_len([[1, 2, 3]]) == 0
