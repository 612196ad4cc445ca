"""RL on several processes against a real local Ray (127.0.0.1, 2 CPUs): rollout workers as
actors, the learner as torch.distributed ranks (gloo, one thread each), and a dead actor."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from components.recipe import RLConfig
from components.rl.rollout_engine import start_engine
from components.rl.segment import read_history, run_segment
from components.rl.workers import ACTOR_PREFIX, RolloutWorkerError

ROWS = [{"id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i), "system": None,
         "task": "numeric", "meta": "{}"} for i in range(6)]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield ray
    ray.shutdown()


def _cfg(**kw):
    # 3 prompts x 4 samples; a group (4) is larger than a micro-batch (2), so each group is one
    # micro-batch and an optimiser step of 12 rollouts has 3 of them (rank 0 takes two, rank 1 one).
    base = dict(steps=3, segment_steps=3, prompts_per_step=3, group_size=4, max_new_tokens=6, lr=1e-3,
                minibatch_size=12, micro_batch_size=2, epochs=2, seed=3, loss={"kl_coef": 0.05})
    base.update(kw)
    return RLConfig.model_validate(base)


def _segment(model_dir, out, cfg, start, end, init=None, **kw):
    run_segment(base_model_dir=model_dir, init_checkpoint=init, rows=ROWS, weights=None, difficulty=None,
                cfg=cfg, start_step=start, end_step=end, out_dir=out, **kw)
    return out


def _weights(d):
    return load_file(str(d / "model" / "model.safetensors"))


def _rollouts(d, step):
    return pq.read_table(d / "rollouts" / f"step-{step:05d}.parquet").to_pylist()


def _recording(calls):
    """``start_engine``, with every generated sample's token ids and log-probs kept in ``calls``."""
    def factory(*args):
        engine = start_engine(*args)
        generate = engine.generate

        def recorded(prompts, n, params):
            batch = generate(prompts, n, params)
            calls.append([[(s.token_ids, s.logprobs) for s in g] for g in batch.groups])
            return batch
        engine.generate = recorded
        return engine
    return factory


def test_two_workers_and_two_ranks_give_the_rollouts_and_weights_of_one_process(local_ray, tiny_model_dir,
                                                                                tmp_path, letter_reward):
    calls_one, calls_two = [], []
    one = _segment(tiny_model_dir, tmp_path / "one", _cfg(steps=2), 0, 2, engine_factory=_recording(calls_one))
    two = _segment(tiny_model_dir, tmp_path / "two", _cfg(steps=2, rollout_workers=2, learner={"world_size": 2}),
                   0, 2, engine_factory=_recording(calls_two))
    # Step 1 samples with the weights the actors received after step 0's update.
    assert len(calls_one) == len(calls_two) == 2
    for a, b in zip(calls_one, calls_two):
        assert [[t for t, _ in g] for g in a] == [[t for t, _ in g] for g in b]
        gap = max(abs(x - y) for ga, gb in zip(a, b) for (_, la), (_, lb) in zip(ga, gb) for x, y in zip(la, lb))
        assert gap < 1e-4
    for step in (0, 1):
        ra, rb = _rollouts(one, step), _rollouts(two, step)
        assert [(r["prompt_id"], r["text"], r["policy_version"]) for r in ra] == \
            [(r["prompt_id"], r["text"], r["policy_version"]) for r in rb]
        assert {r["policy_version"] for r in rb} == {step}
    w1, w2, base = _weights(one), _weights(two), load_file(str(tiny_model_dir / "model.safetensors"))
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - base[k]).abs().max()) for k in w1) > 1e-4  # two steps really moved the weights
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5
    assert not any(a["name"].startswith(ACTOR_PREFIX) for a in local_ray.util.list_named_actors(all_namespaces=True))


def _kill_at(ray, step, kind):
    def hook(metrics, s):
        if s == step:
            names = [a for a in ray.util.list_named_actors(all_namespaces=True)
                     if a["name"].startswith(f"{ACTOR_PREFIX}-{kind}-")]
            ray.kill(ray.get_actor(names[-1]["name"], namespace=names[-1]["namespace"]))
    return hook


def test_a_dead_learner_rank_fails_the_segment_and_the_rerun_resumes(local_ray, tiny_model_dir, tmp_path,
                                                                     letter_reward):
    cfg = _cfg()
    first = _segment(tiny_model_dir, tmp_path / "first", cfg, 0, 1)  # in process: its checkpoint resumes at W = 2
    whole = _segment(tiny_model_dir, tmp_path / "whole", cfg, 1, 3, init=first)
    dist = cfg.model_copy(update={"learner": cfg.learner.model_copy(update={"world_size": 2})})
    with pytest.raises(RolloutWorkerError, match="actor died"):
        _segment(tiny_model_dir, tmp_path / "broken", dist, 1, 3, init=first,
                 log_metrics=_kill_at(local_ray, 1, "learner"))
    assert not (tmp_path / "broken" / "trainer_state.pt").exists()
    rerun = _segment(tiny_model_dir, tmp_path / "rerun", dist, 1, 3, init=first)
    a, b = _weights(whole), _weights(rerun)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert max(float((a[k] - _weights(first)[k]).abs().max()) for k in a) > 1e-4
    assert [r["text"] for r in _rollouts(whole, 2)] == [r["text"] for r in _rollouts(rerun, 2)]


def test_two_fsdp2_ranks_give_the_weights_of_one_process_and_resume_across_sharding(local_ray, tiny_model_dir,
                                                                                     tmp_path, letter_reward):
    # Step 0 in process, steps 1-2 sharded over W = 2 from its checkpoint (a W = 1 checkpoint resumed
    # sharded), then step 3 in process from the sharded checkpoint; against the same steps in process.
    cfg = _cfg(steps=4, segment_steps=4)
    fsdp = cfg.model_copy(update={"learner": cfg.learner.model_copy(update={"world_size": 2, "sharding": "fsdp2"})})
    first = _segment(tiny_model_dir, tmp_path / "first", cfg, 0, 1)
    mid = _segment(tiny_model_dir, tmp_path / "mid", fsdp, 1, 3, init=first)
    ref = _segment(tiny_model_dir, tmp_path / "ref", cfg, 1, 3, init=first)
    last = _segment(tiny_model_dir, tmp_path / "last", cfg, 3, 4, init=mid)
    cont = _segment(tiny_model_dir, tmp_path / "cont", cfg, 3, 4, init=ref)
    for a, b in ((ref, mid), (cont, last)):
        wa, wb = _weights(a), _weights(b)
        assert wa.keys() == wb.keys()
        assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    assert max(float((_weights(mid)[k] - _weights(first)[k]).abs().max()) for k in _weights(mid)) > 1e-4
    norms = [[h["grad_norm"] for h in read_history(d)] for d in (ref, mid)]
    assert norms[0] == pytest.approx(norms[1], rel=1e-5)
    sa, sb = (torch.load(d / "trainer_state.pt", weights_only=False)["optimizer"] for d in (ref, mid))
    assert sa["state"].keys() == sb["state"].keys()
    assert max(float((sa["state"][i][k] - sb["state"][i][k]).abs().max())
               for i in sa["state"] for k in ("exp_avg", "exp_avg_sq")) < 1e-6


def test_fsdp2_with_lora_is_refused_in_one_line():
    with pytest.raises(ValueError, match="fsdp2 cannot be combined with lora"):
        _cfg(lora={"r": 4}, learner={"world_size": 2, "sharding": "fsdp2"})
