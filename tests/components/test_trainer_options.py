"""RL options the other trainer tests leave out: Thompson prompt sampling and gradient checkpointing."""

import json

import torch
from safetensors.torch import load_file

from components.difficulty.online import OnlineTracker
from components.recipe import RLConfig
from components.rl.collector import PromptSampler
from components.rl.segment import run_segment

ROWS = [{"id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i), "system": None,
         "task": "numeric", "meta": "{}"} for i in range(6)]


def _tracker() -> OnlineTracker:
    # p0 ~ Beta(50, 50): a draw lies within 0.5 +- 0.2 (6 sd) so p(1-p) >= 0.21.
    # p1 ~ Beta(200, 1): p(1-p) >= 0.16 needs p < 0.8, probability 0.8^200 ~ 4e-20.
    # p2 ~ Beta(1, 200): the mirror image. So Thompson picks p0 first, every time.
    t = OnlineTracker(decay=1.0)
    t._counts = {"p0": [50.0, 50.0], "p1": [200.0, 1.0], "p2": [1.0, 200.0]}
    return t


def test_thompson_sampler_prefers_the_informative_prompt_and_is_seeded():
    rows = ROWS[:3]
    s = PromptSampler(rows, None, "thompson", _tracker(), seed=3)
    for step in range(20):
        assert s.sample(step, 1) == [0]
        assert s.sample(step, 2)[0] == 0
    assert s.sample(7, 3) == s.sample(7, 3)  # same step and attempt: same draw (resume-safe)
    assert sorted(s.sample(7, 3)) == [0, 1, 2]
    assert s.sample(7, 2, exclude={0}) in ([1, 2], [2, 1])


def test_uniform_sampler_follows_the_selection_weights():
    # Weight 0 means the selection dropped the prompt: it is never drawn.
    s = PromptSampler(ROWS[:3], [1.0, 0.0, 1.0], "uniform", None, seed=0)
    drawn = {i for step in range(30) for i in s.sample(step, 1)}
    assert drawn == {0, 2}


def _cfg(**kw):
    base = dict(steps=1, segment_steps=1, prompts_per_step=2, group_size=3, max_new_tokens=4, lr=1e-2,
                minibatch_size=3, micro_batch_size=2, epochs=1, seed=5)
    base.update(kw)
    return RLConfig(**base)


def test_thompson_segment_saves_the_updated_tracker(tiny_model_dir, tmp_path):
    out = tmp_path / "t"
    run_segment(base_model_dir=tiny_model_dir, init_checkpoint=None, rows=ROWS, weights=None, difficulty=None,
                cfg=_cfg(sampler="thompson"), start_step=0, end_step=1, out_dir=out)
    state = json.loads((out / "tracker.json").read_text())
    text = json.dumps(state)
    # Two prompts were sampled and scored in the one step, so two prompts have evidence.
    assert sum(f'"p{i}"' in text for i in range(6)) >= 2


def test_gradient_checkpointing_gives_the_same_update(tiny_model_dir, tmp_path, letter_reward):
    """Checkpointing trades memory for recomputation; the gradients, hence the weights, are the same."""
    outs = {}
    for gc in (False, True):
        out = tmp_path / f"gc-{gc}"
        run_segment(base_model_dir=tiny_model_dir, init_checkpoint=None, rows=ROWS, weights=None, difficulty=None,
                    cfg=_cfg(gradient_checkpointing=gc), start_step=0, end_step=1, out_dir=out)
        outs[gc] = load_file(str(out / "model" / "model.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert outs[False].keys() == outs[True].keys()
    assert all(torch.allclose(outs[False][k], outs[True][k], atol=1e-6) for k in outs[False])
    assert any(not torch.equal(outs[True][k], base[k]) for k in base if k in outs[True])


def test_learner_uses_fused_adamw_with_the_default_step(tiny_model_dir):
    """The learner's fused AdamW (plain CPU tensors) takes the step the default AdamW takes."""
    from components.models import load_model
    from components.rl.learner import Learner

    learner = Learner(_cfg(), load_model(tiny_model_dir))
    assert learner.opt.defaults["fused"] is True
    ref_model = load_model(tiny_model_dir)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=learner.cfg.lr, weight_decay=learner.cfg.weight_decay)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(learner.model.parameters(), ref_model.parameters()):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        learner.opt.step()
        ref.step()
    for p, q in zip(learner.model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
