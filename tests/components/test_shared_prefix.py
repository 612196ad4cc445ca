"""Prefix-shared trainer forward/backward: the same log-probs, entropies and gradients as the
plain path (one [prompt + response] row per rollout), and micro-batches that keep groups whole."""

import pytest
import torch

from components.models import load_model
from components.rl.batch import build_batch, pack_shared_prompts, plan_microbatches, response_logprobs

PROMPTS = [[5, 9, 14, 3], [7, 2, 11, 4, 8, 6, 1]]
RESPONSES = [[[10, 12, 4], [10, 3], [], [6, 6, 6, 6, 9]], [[13], [13, 2, 5], [8, 8, 7, 1]]]


# A header (as an environment's system prompt and worked turns) that every prompt starts with; the
# third prompt is the second one cut short, so it shares more than the header with it.
HEADER = [21, 4, 17, 9, 30, 2, 2, 8, 15, 11, 26, 3]
HEADED = [HEADER + [5, 9], HEADER + [7, 2, 11, 4], HEADER + [7, 2]]
HEADED_RESPONSES = [[[10, 12, 4], [10, 3]], [[13], [], [8, 8, 7, 1]], [[6, 6, 9], [1]]]


def _batch(prompt_set=PROMPTS, response_set=RESPONSES):
    prompts, responses, lps, vers, advs = [], [], [], [], []
    for p, group in zip(prompt_set, response_set):
        for k, r in enumerate(group):
            prompts.append(p)
            responses.append(r)
            lps.append([-1.0] * len(r))
            vers.append([0] * len(r))
            advs.append(0.5 - 0.3 * k)
    # Interleave the groups: sharing must not depend on rollouts of one prompt being adjacent.
    order = [0, 4, 1, 5, 2, 6, 3] if prompt_set is PROMPTS else [0, 2, 5, 1, 3, 6, 4]
    pick = lambda xs: [xs[i] for i in order]  # noqa: E731
    return build_batch(pick(prompts), pick(responses), pick(lps), pick(vers), pick(advs), pad_id=0)


def _value_and_grads(model, batch, share):
    model.zero_grad(set_to_none=True)
    logp, ent = response_logprobs(model, batch, temperature=0.7, chunk_size=5, share_prompts=share)
    w = torch.linspace(-1.0, 1.0, logp.numel()).view_as(logp)
    ((logp * w).sum() + 0.1 * (ent * w.flip(0)).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), ent.detach(), grads


@pytest.mark.parametrize("headed", [False, True], ids=["distinct-prompts", "common-header"])
@pytest.mark.parametrize("attn,checkpointing", [("sdpa", False), ("sdpa", True), ("eager", False)])
def test_shared_forward_backward_equals_plain(tiny_model_dir, attn, checkpointing, headed):
    model = load_model(tiny_model_dir)
    model.set_attn_implementation(attn)
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    batch = _batch(HEADED, HEADED_RESPONSES) if headed else _batch()
    packed = pack_shared_prompts(batch)
    if headed:  # one row: the header once, each prompt's suffix once, then its responses
        assert packed.ids.shape[0] == 1
        tokens = len(HEADER) + sum(len(p) - len(HEADER) for p in HEADED) + sum(map(len, sum(HEADED_RESPONSES, [])))
        assert int((packed.seg >= 0).sum()) == tokens
    else:
        assert packed.ids.shape[0] == 2  # each prompt laid out once
    lp_s, ent_s, g_s = _value_and_grads(model, batch, True)
    lp_p, ent_p, g_p = _value_and_grads(model, batch, False)
    mask = batch.resp_mask.bool()
    assert bool((lp_s[~mask] == 0).all()) and bool((lp_s[mask] < 0).all())
    assert torch.allclose(lp_s, lp_p, atol=2e-5) and torch.allclose(ent_s, ent_p, atol=2e-5)
    assert g_s.keys() == g_p.keys() and len(g_s) == len(dict(model.named_parameters()))
    for n in g_p:
        scale = float(g_p[n].abs().max()) + 1e-12
        assert float((g_s[n] - g_p[n]).abs().max()) <= 1e-4 * scale, n


def test_microbatches_keep_groups_whole_and_cover_every_rollout():
    sizes = [3, 5, 3, 2, 4]
    gen = torch.Generator().manual_seed(0)
    plan = plan_microbatches(sizes, minibatch_size=6, micro_batch_size=4, gen=gen, whole_groups=True)
    starts = [sum(sizes[:g]) for g in range(len(sizes))]
    groups = [set(range(s, s + n)) for s, n in zip(starts, sizes)]
    seen = []
    for mb in plan:
        assert sum(len(m) for m in mb) >= 6 or mb is plan[-1]
        for micro in mb:
            idx = set(micro.tolist())
            seen += micro.tolist()
            assert all(g <= idx or not (g & idx) for g in groups)  # a group is never split
            assert len(idx) <= 4 or any(g == idx for g in groups)  # over the size only as one group
    assert sorted(seen) == list(range(sum(sizes)))
    plain = plan_microbatches(sizes, minibatch_size=6, micro_batch_size=4, gen=torch.Generator().manual_seed(0),
                              whole_groups=False)
    assert [len(m) for mb in plain for m in mb] == [4, 2, 4, 2, 4, 1]


def test_old_logprobs_come_from_the_engine_only_for_the_same_policy(tiny_model_dir):
    from components.engines.base import SamplingParams
    from components.engines.transformers_engine import engine_for
    from components.models import load_tokenizer
    from components.rl.learner import engine_logps_are_old

    model = load_model(tiny_model_dir)
    engine = engine_for(model, load_tokenizer(tiny_model_dir), "rl", policy_version=3)
    out = engine.generate([[{"role": "user", "content": "What is 2 + 3?"}]], 3, SamplingParams(max_new_tokens=5, seed=0))
    g = out.groups[0]
    tb = build_batch([out.prompt_token_ids[0]] * 3, [s.token_ids for s in g], [s.logprobs for s in g],
                     [s.versions for s in g], [0.0, 1.0, -1.0], pad_id=0)
    assert engine_logps_are_old(engine, model, tb)
    # The engine's log-probs are the trainer's to the engine tolerance, so they can stand in for a recompute.
    with torch.no_grad():
        trainer = response_logprobs(model, tb, share_prompts=True)[0]
    assert torch.allclose(trainer, tb.engine_logp * tb.resp_mask, atol=1e-4)
    tb.versions[0, 0] = 2  # a token carried over from an older policy: recompute instead
    assert not engine_logps_are_old(engine, model, tb)
    tb.versions[0, 0] = 3
    assert not engine_logps_are_old(engine, load_model(tiny_model_dir), tb)  # another model object


def test_a_long_tree_row_falls_back_to_one_row_per_prompt(monkeypatch):
    from components.rl import batch as rl_batch

    batch = _batch(HEADED, HEADED_RESPONSES)
    tokens = int((pack_shared_prompts(batch).seg >= 0).sum())
    monkeypatch.setattr(rl_batch, "MAX_TREE_ROW", tokens - 1)
    packed = pack_shared_prompts(batch)
    assert packed.ids.shape[0] == len(HEADED)  # the header repeated in each prompt's row
    assert int((packed.seg >= 0).sum()) == tokens + (len(HEADED) - 1) * len(HEADER)
