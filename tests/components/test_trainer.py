"""RL segments on a tiny model: metrics, checkpoint contents, and bitwise-exact resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from components.recipe import RLConfig
from components.rl.segment import run_segment

ROWS = [{"id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i), "system": None,
         "task": "numeric", "meta": "{}"} for i in range(6)]


def _cfg(**kw):
    base = dict(steps=2, segment_steps=1, prompts_per_step=2, group_size=3, max_new_tokens=4, lr=1e-2,
                minibatch_size=3, micro_batch_size=2, epochs=2, seed=5)
    base.update(kw)
    return RLConfig(**base)


def _weights(d):
    return load_file(str(d / "model" / "model.safetensors"))


def test_resume_is_bitwise_identical(tiny_model_dir, tmp_path, letter_reward):
    cfg = _cfg()
    full = tmp_path / "full"
    run_segment(base_model_dir=tiny_model_dir, init_checkpoint=None, rows=ROWS, weights=None, difficulty=None,
                cfg=cfg, start_step=0, end_step=2, out_dir=full)
    a, b = tmp_path / "a", tmp_path / "b"
    run_segment(base_model_dir=tiny_model_dir, init_checkpoint=None, rows=ROWS, weights=None, difficulty=None,
                cfg=cfg, start_step=0, end_step=1, out_dir=a)
    run_segment(base_model_dir=tiny_model_dir, init_checkpoint=a, rows=ROWS, weights=None, difficulty=None,
                cfg=cfg, start_step=1, end_step=2, out_dir=b)
    wf, wb = _weights(full), _weights(b)
    assert wf.keys() == wb.keys()
    assert all(torch.equal(wf[k], wb[k]) for k in wf)
    assert not all(torch.equal(wf[k], _weights(a)[k]) for k in wf)  # the second step changed something
    hist = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [0, 1]
    assert json.loads((b / "tracker.json").read_text())


def test_step_metrics_and_rollouts(tiny_model_dir, tmp_path, letter_reward):
    logged = []
    cfg = _cfg(steps=1, loss={"variant": "dapo", "clip_high": 0.28, "kl_coef": 0.1, "entropy_coef": 0.01})
    out = tmp_path / "o"
    tables = []
    summary = run_segment(base_model_dir=tiny_model_dir, init_checkpoint=None, rows=ROWS, weights=None,
                          difficulty=None, cfg=cfg, start_step=0, end_step=1, out_dir=out,
                          log_metrics=lambda m, s: logged.append((s, m)),
                          log_table=lambda rows, name: tables.append((name, rows)))
    assert tables[0][0] == "rollouts/step-00000.json" and len(tables[0][1]) == 6
    step, m = logged[0]
    assert step == 0
    for k in ("reward_mean", "reward_std", "pass_rate", "response_len_mean", "truncated_frac", "clip_frac",
              "kl", "entropy", "grad_norm", "zero_variance_frac", "logprob_mismatch", "gen_tokens_per_s",
              "train_tokens_per_s", "time_generate_s", "time_update_s", "peak_rss_mb"):
        assert k in m, k
    # The engine and the trainer see the same fp32 model: their log-probs agree closely.
    assert m["logprob_mismatch"] < 1e-3
    assert 0.0 <= summary["update_sparsity"] < 1.0
    import pyarrow.parquet as pq

    t = pq.read_table(out / "rollouts" / "step-00000.parquet").to_pylist()
    assert len(t) == cfg.prompts_per_step * cfg.group_size
    assert {"prompt_id", "text", "reward", "finish_reason", "policy_version", "engine_logprob_sum"} <= set(t[0])


class _NeverCorrect:
    version = "test"

    def __call__(self, text, answer, meta=None):
        from components.rewards import RewardResult

        return RewardResult(score=0.0, parts={}, error=None)


def test_dynamic_sampling_refills_zero_variance_groups(tiny_model_dir, tmp_path, monkeypatch):
    # No completion is ever correct: every group has zero variance, so dynamic sampling keeps
    # drawing fresh prompts until the refill rounds run out. (The numeric reward on the random
    # tiny model is not enough: a sampled "0" does answer "What is 0 + 0?".)
    import components.scoring as scoring

    monkeypatch.setattr(scoring, "get_reward", lambda name: _NeverCorrect())
    logged = []
    cfg = _cfg(steps=1, dynamic_sampling=True, max_refill_rounds=2, prompts_per_step=2)
    run_segment(base_model_dir=tiny_model_dir, init_checkpoint=None, rows=ROWS, weights=None, difficulty=None,
                cfg=cfg, start_step=0, end_step=1, out_dir=tmp_path / "d", log_metrics=lambda m, s: logged.append(m))
    m = logged[0]
    assert m["zero_variance_frac"] == 1.0
    assert m["groups_sampled"] == 6  # 2 prompts x (1 + 2 refill rounds)


def test_partial_rollouts_length_schedule_and_overlong(tiny_model_dir, tmp_path, letter_reward):
    """Partial rollouts carry a buffer through the checkpoint; the schedule sets the budget."""
    logged = []
    cfg = _cfg(steps=2, epochs=1, partial={"enabled": True, "over_provision": 2.0, "chunk_tokens": 2},
               length_schedule={"kind": "linear", "start": 2, "end": 4, "period": 1},
               overlong={"buffer_len": 1, "penalty": 0.5})
    a = tmp_path / "a"
    run_segment(base_model_dir=tiny_model_dir, init_checkpoint=None, rows=ROWS, weights=None, difficulty=None,
                cfg=cfg, start_step=0, end_step=1, out_dir=a, log_metrics=lambda m, s: logged.append(m))
    run_segment(base_model_dir=tiny_model_dir, init_checkpoint=a, rows=ROWS, weights=None, difficulty=None,
                cfg=cfg, start_step=1, end_step=2, out_dir=tmp_path / "b", log_metrics=lambda m, s: logged.append(m))
    assert [m["max_new_tokens"] for m in logged] == [2.0, 4.0]  # linear 2 -> 4 over one step
    assert all(m["partial/complete_groups"] == cfg.prompts_per_step for m in logged)
    # Over-provisioning 2x asks for 4 prompts while 2 complete groups are the target: what was
    # not used is in the checkpoint's buffer, and the next segment starts from it.
    state = json.loads((a / "partial_buffer.json").read_text())
    assert len(state["groups"]) == logged[0]["partial/buffered_groups"] > 0


def test_partial_without_tis_is_refused():
    with pytest.raises(ValueError, match="tis_cap"):
        _cfg(partial={"enabled": True}, loss={"tis_cap": None})


def test_lora_segments_resume_exactly_and_export_merged_weights(tiny_model_dir, tmp_path, letter_reward):
    cfg = _cfg(lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, lr=5e-2)
    full, a, b = tmp_path / "full", tmp_path / "a", tmp_path / "b"
    kw = dict(base_model_dir=tiny_model_dir, rows=ROWS, weights=None, difficulty=None, cfg=cfg)
    run_segment(init_checkpoint=None, start_step=0, end_step=2, out_dir=full, **kw)
    run_segment(init_checkpoint=None, start_step=0, end_step=1, out_dir=a, **kw)
    run_segment(init_checkpoint=a, start_step=1, end_step=2, out_dir=b, **kw)
    assert (a / "adapter" / "adapter_config.json").exists()
    wf, wb = _weights(full), _weights(b)
    assert all(torch.equal(wf[k], wb[k]) for k in wf)
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    changed = {k for k in wf if k in base and not torch.equal(wf[k], base[k])}
    # Only the LoRA-targeted projections moved; the merged checkpoint has plain weight names.
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)
    assert not any("lora" in k for k in wf)


def test_a_lora_segment_is_the_same_bytes_from_another_base_folder(tiny_model_dir, tmp_path, letter_reward):
    """The adapter names neither the base model's folder nor a set order: the same segment from a
    copy of the base in another folder (another state folder) has the same digest."""
    import shutil

    from components.artifacts import sha256_dir

    cfg = _cfg(lora={"r": 4, "alpha": 8, "target_modules": ["v_proj", "q_proj", "o_proj"]}, lr=5e-2)
    other_base = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere" / "base")
    digests = []
    for base, out in ((tiny_model_dir, tmp_path / "a"), (other_base, tmp_path / "b")):
        run_segment(base_model_dir=base, rows=ROWS, weights=None, difficulty=None, cfg=cfg,
                    init_checkpoint=None, start_step=0, end_step=1, out_dir=out)
        digests.append(sha256_dir(out / "adapter"))
    assert digests[0] == digests[1]
    saved = json.loads((tmp_path / "b" / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] is None and saved["target_modules"] == ["o_proj", "q_proj", "v_proj"]
    assert str(tmp_path) not in "".join(p.read_text(errors="ignore") for p in (tmp_path / "b" / "adapter").glob("*.json"))


def test_dars_allocation_keeps_the_budget_and_favours_hard_prompts():
    from components.difficulty.online import OnlineTracker
    from components.rl.collector import group_sizes

    cfg = _cfg(group_size=4, rollout_allocation="dars")
    tracker = OnlineTracker()
    rows = ROWS[:3]
    # p0 always solved, p1 solved 1 in 8 (hard but solvable), p2 half the time.
    tracker.update(["p0"] * 8 + ["p1"] * 8 + ["p2"] * 8, [1.0] * 8 + [1.0] + [0.0] * 7 + [1.0, 0.0] * 4)
    sizes = group_sizes(rows, cfg, tracker)
    assert sum(sizes) == len(rows) * cfg.group_size
    assert all(2 <= n <= 8 for n in sizes)
    assert sizes[1] > sizes[0]
    assert group_sizes(rows, _cfg(group_size=4), tracker) == [4, 4, 4]


def test_dars_segment_runs_with_variable_groups(tiny_model_dir, tmp_path, letter_reward):
    import pyarrow.parquet as pq

    cfg = _cfg(steps=1, rollout_allocation="dars", prompts_per_step=3, group_size=4)
    out = tmp_path / "d"
    run_segment(base_model_dir=tiny_model_dir, init_checkpoint=None, rows=ROWS, weights=None, difficulty=None,
                cfg=cfg, start_step=0, end_step=1, out_dir=out)
    t = pq.read_table(out / "rollouts" / "step-00000.parquet").to_pylist()
    assert len(t) == 12  # the budget prompts_per_step * group_size is spent exactly
