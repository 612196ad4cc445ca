"""Rollout-engine choice in RL without a vLLM server: exported policy weights, LoRA merging,
engine lifetime in a segment, and the recipe switch."""

import copy

import pytest
import torch
from safetensors.torch import load_file

from components.engines.transformers_engine import TransformersEngine
from components.models import load_model
from components.recipe import RecipeError, RLConfig, load_recipe
from components.rl.rollout_engine import export_policy, policy_state_dict, start_engine, sync_weights
from components.rl.segment import run_segment

ROWS = [{"id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i), "system": None,
         "task": "numeric", "meta": "{}"} for i in range(4)]


def _lora(model_dir, seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    m = get_peft_model(load_model(model_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"]))
    with torch.no_grad():  # peft starts B at zero (no change); make the adapters do something
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.1)
    return m


def test_lora_policy_is_the_merged_model_and_stays_unmerged(tiny_model_dir):
    m = _lora(tiny_model_dir)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    sd = policy_state_dict(m)
    merged = copy.deepcopy(m).merge_and_unload().state_dict()
    merged.pop("lm_head.weight")  # tied to the embeddings in the tiny model
    assert sd.keys() == merged.keys()
    assert all(torch.allclose(sd[k], merged[k], atol=1e-6) for k in sd)
    assert not torch.equal(sd["model.layers.0.self_attn.q_proj.weight"],
                           before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"])
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # training state untouched


def test_exported_policy_loads_and_computes_the_same(tiny_model_dir, tmp_path):
    m = _lora(tiny_model_dir)
    out = export_policy(m, tmp_path / "policy-v3", tiny_model_dir)
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= {f.name for f in out.iterdir()}
    assert not any("lora" in k for k in load_file(str(out / "model.safetensors")))
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    with torch.no_grad():
        want = m(input_ids=ids).logits
        got = load_model(out)(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)


class _Recording(TransformersEngine):
    closed = False

    def close(self):
        self.closed = True


def test_segment_closes_its_engine_at_the_end_and_on_error(tiny_model_dir, tmp_path, monkeypatch):
    cfg = RLConfig(steps=2, segment_steps=2, prompts_per_step=2, group_size=2, max_new_tokens=3,
                   minibatch_size=4, micro_batch_size=4)
    made = []

    def factory(cfg_, model, tok, template, start, dtype, work):
        assert (cfg_, template, start) == (cfg, tiny_model_dir, 0) and work.is_dir()
        made.append(_Recording(model, tok, policy_version=start))
        return made[-1]

    run_segment(base_model_dir=tiny_model_dir, init_checkpoint=None, rows=ROWS, weights=None, difficulty=None,
                cfg=cfg, start_step=0, end_step=2, out_dir=tmp_path / "ok", engine_factory=factory)
    assert made[-1].closed and made[-1].policy_version == 2

    def fail(*a, **k):
        raise RuntimeError("engine died")

    monkeypatch.setattr(_Recording, "generate", fail)
    with pytest.raises(RuntimeError, match="engine died"):
        run_segment(base_model_dir=tiny_model_dir, init_checkpoint=None, rows=ROWS, weights=None, difficulty=None,
                    cfg=cfg, start_step=0, end_step=2, out_dir=tmp_path / "bad", engine_factory=factory)
    assert made[-1].closed


def test_transformers_engine_is_the_default_and_sync_only_moves_its_version(tiny_model_dir, tmp_path):
    model = load_model(tiny_model_dir)
    from components.models import load_tokenizer

    eng = start_engine(RLConfig(), model, load_tokenizer(tiny_model_dir), tiny_model_dir, 5, torch.float32, tmp_path)
    assert isinstance(eng, TransformersEngine) and eng.model is model and eng.policy_version == 5
    assert sync_weights(eng, model, 6, tiny_model_dir, tmp_path) == {}
    assert eng.policy_version == 6 and list(tmp_path.iterdir()) == []  # nothing exported


def test_recipe_engine_switch_is_validated():
    assert load_recipe("smoke", ["rl_train.engine=vllm"]).rl_train.engine == "vllm"
    with pytest.raises(RecipeError, match="rl_train.engine"):
        load_recipe("smoke", ["rl_train.engine=sglang"])
    with pytest.raises(RecipeError, match="partial.enabled needs engine: transformers"):
        load_recipe("smoke", ["rl_train.engine=vllm", "rl_train.partial.enabled=true"])
    cfg = load_recipe("smoke", ["rl_train.vllm.kv_cache_memory_bytes=1048576"]).rl_train.vllm
    assert cfg.kv_cache_memory_bytes == 2**20 and cfg.dtype == "trainer" and cfg.reload == "auto"
