"""The transformers engine: shapes, log-probs equal a separate forward pass, seeded sampling."""

import torch

from components.engines.base import SamplingParams
from components.engines.transformers_engine import TransformersEngine
from components.models import load_model, load_tokenizer

PROMPTS = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Hi"}]]


def _engine(d, **kw):
    return TransformersEngine(load_model(d), load_tokenizer(d), **kw)


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


def test_logprobs_match_separate_forward(tiny_model_dir):
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
