import pytest

from components.recipe import RecipeError, builtin_recipes, load_recipe, stage_config


def test_builtin_recipes_validate():
    assert {"smoke", "default"} <= set(builtin_recipes())
    for name in builtin_recipes():
        r = load_recipe(name)
        assert r.name == name


def test_override_applies_and_is_validated():
    r = load_recipe("smoke", ["rl_train.steps=6", "compress.variants=[rtn-w4g32]"])
    assert r.rl_train.steps == 6
    assert r.compress.variants[0].quant.bits == 4


def test_bad_field_is_named():
    with pytest.raises(RecipeError, match=r"rl_train\.loss\.variant"):
        load_recipe("smoke", ["rl_train.loss.variant=ppo"])
    with pytest.raises(RecipeError, match=r"rl_train\.stepz: unknown field"):
        load_recipe("smoke", ["rl_train.stepz=3"])


def test_unknown_recipe_lists_builtins(tmp_path):
    with pytest.raises(RecipeError, match="smoke"):
        load_recipe("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("curate: [1, 2\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(str(bad))


def test_stage_config_drops_refresh():
    r = load_recipe("smoke", ["compress.refresh=true"])
    assert "refresh" not in stage_config(r, "compress")
    assert r.compress.refresh is True
