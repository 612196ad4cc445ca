"""A loss variant or an advantage estimator registered in this file is usable from a recipe
(``rl_train.loss.variant``, ``rl_train.advantage``) without editing any other file."""

import pytest
import torch
from safetensors.torch import load_file

from components.recipe import RecipeError, RLConfig, load_recipe
from components.rl.advantages import register_advantage
from components.rl.losses import LOSSES, LossInputs, LossOutput, get_loss, register_loss
from components.rl.segment import run_segment

ROWS = [{"id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i), "system": None,
         "task": "numeric", "meta": "{}"} for i in range(6)]
CALLS: list[str] = []


@register_loss("test_no_step")
def no_step_loss(inp: LossInputs, cfg) -> LossOutput:
    """GRPO's loss and metrics, but nothing to backpropagate: the optimiser never moves the weights."""
    CALLS.append("test_no_step")
    out = get_loss("grpo")(inp, cfg)
    return LossOutput(out.loss, out.scaled * 0.0, out.metrics)


@register_advantage("test_zero")
def zero_advantage(rewards: torch.Tensor, std_normalize: bool, eps: float) -> torch.Tensor:
    """No sample is better than another."""
    return torch.zeros_like(rewards)


def _rl(*overrides: str) -> RLConfig:
    small = ["rl_train.steps=1", "rl_train.segment_steps=1", "rl_train.prompts_per_step=2", "rl_train.group_size=3",
             "rl_train.max_new_tokens=4", "rl_train.lr=1e-2", "rl_train.seed=5"]
    return load_recipe("smoke", small + list(overrides)).rl_train


def _segment(model_dir, out, cfg: RLConfig) -> list[dict]:
    logged: list[dict] = []
    run_segment(base_model_dir=model_dir, init_checkpoint=None, rows=ROWS, weights=None, difficulty=None, cfg=cfg,
                start_step=0, end_step=1, out_dir=out, log_metrics=lambda m, s: logged.append(m))
    return logged


def _moved(model_dir, out) -> bool:
    base, new = load_file(str(model_dir / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    return any(not torch.equal(base[k], new[k]) for k in new if k in base)


def test_a_loss_registered_in_a_test_file_runs_from_the_recipe(tiny_model_dir, tmp_path, letter_reward):
    CALLS.clear()
    cfg = _rl("rl_train.loss.variant=test_no_step")
    assert cfg.loss.variant == "test_no_step"
    mine = _segment(tiny_model_dir, tmp_path / "mine", cfg)
    assert CALLS and set(CALLS) == {"test_no_step"}  # one call per micro-batch, all of them this function
    grpo = _segment(tiny_model_dir, tmp_path / "grpo", _rl())
    # Same seeds, same rollouts: the first forward's loss is GRPO's, but only GRPO moves the weights.
    assert mine[0]["reward_std"] > 0 and mine[0]["reward_mean"] == grpo[0]["reward_mean"]
    assert mine[0]["pg_loss"] != 0.0
    assert _moved(tiny_model_dir, tmp_path / "grpo")
    assert not _moved(tiny_model_dir, tmp_path / "mine")


def test_an_advantage_registered_in_a_test_file_runs_from_the_recipe(tiny_model_dir, tmp_path, letter_reward):
    cfg = _rl("rl_train.advantage=test_zero", "rl_train.epochs=1")
    m = _segment(tiny_model_dir, tmp_path / "zero", cfg)
    # Rewards vary, but zero advantages leave GRPO nothing to push: loss 0 and the weights stay.
    assert m[0]["reward_std"] > 0 and m[0]["pg_loss"] == 0.0
    assert not _moved(tiny_model_dir, tmp_path / "zero")


def test_registered_names_are_the_allowed_values():
    with pytest.raises(RecipeError, match=r"rl_train\.loss\.variant") as e:
        load_recipe("smoke", ["rl_train.loss.variant=nope"])
    assert all(name in str(e.value) for name in LOSSES)
    assert "test_zero" in RLConfig.model_json_schema()["properties"]["advantage"]["enum"]
    variant = RLConfig.model_json_schema()["$defs"]["LossConfig"]["properties"]["variant"]
    assert set(variant["enum"]) == set(LOSSES) >= {"grpo", "dapo", "drgrpo", "gspo", "test_no_step"}
    with pytest.raises(ValueError, match="already registered"):
        register_loss("grpo")(no_step_loss)
