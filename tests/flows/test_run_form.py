"""The run form the Prefect UI draws from the `post-training` deployment: the recipe is a choice
of built-in recipes and files under POSTTRAIN_RECIPES_DIR, stages a choice of stage names,
overrides checked key=value items, `config` pre-filled from the named recipe and accepted
unchanged, every field described, and bad input refused naming the field. Checked with the
validator the Prefect server applies to a new flow run (enforce_parameter_schema)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def form(tmp_path):
    """The post-training deployment's schema and parameter defaults, with one recipe file in
    the recipes folder (flow modules read the settings when imported: fresh import here)."""
    import sys

    from components.settings import reset_settings

    old = dict(os.environ)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "mine.yaml").write_text("name: mine\ncurate:\n  sources: [{type: arithmetic, name: a, n: 10}]\n")
    os.environ.update(POSTTRAIN_STATE_DIR=str(tmp_path / "state"), POSTTRAIN_RECIPES_DIR=str(recipes),
                      POSTTRAIN_PREFECT_API_URL="http://127.0.0.1:9/api")
    reset_settings()
    for m in ("flows.post_training", "flows.retrain"):
        sys.modules.pop(m, None)
    try:
        from prefect.utilities.callables import parameter_schema

        import flows.post_training as pt
        from flows.deployments import deployment_specs, form_parameters

        spec = next(s for s in deployment_specs("smoke") if s.name == "post-training")
        yield {"schema": parameter_schema(pt.post_training).model_dump(), "defaults": form_parameters(spec),
               "recipe_file": str(recipes / "mine.yaml")}
    finally:
        os.environ.clear()
        os.environ.update(old)
        reset_settings()
        for m in ("flows.post_training", "flows.retrain"):
            sys.modules.pop(m, None)


def _errors(schema: dict, params: dict) -> list[str]:
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    try:
        validate(params, schema, raise_on_error=True, preprocess=True, ignore_required=True)
    except ValidationError as e:
        return [str(e)]
    return []


def _undescribed(schema: dict) -> list[str]:
    out = []
    for name, d in {"(parameters)": schema, **schema.get("definitions", {})}.items():
        out += [f"{name}.{p}" for p, v in d.get("properties", {}).items() if not v.get("description")]
    return out


def test_form_offers_choices_is_prefilled_and_described(form):
    from components.recipe import STAGES, builtin_recipes, load_recipe

    schema, defaults = form["schema"], form["defaults"]
    props = schema["properties"]
    assert props["recipe"]["enum"] == [*builtin_recipes(), form["recipe_file"]]
    assert props["stages"]["anyOf"][0]["items"]["enum"] == list(STAGES)
    assert _undescribed(schema) == []
    assert defaults == {"recipe": "smoke", "config": load_recipe("smoke").model_dump(mode="json")}
    assert _errors(schema, defaults) == []  # submitting the form unchanged is accepted


@pytest.mark.parametrize("params, field", [
    ({"recipe": "smok"}, "recipe"),
    ({"stages": ["curat"]}, "stages[0]"),
    ({"overrides": ["rl_train.steps"]}, "overrides[0]"),
])
def test_typos_are_refused_in_one_line_naming_the_field(form, params, field):
    (err,) = _errors(form["schema"], {**form["defaults"], **params})
    assert "\n" not in err and f"'{field}'" in err, err


def test_bad_config_value_is_refused_naming_its_path(form):
    cfg = form["defaults"]["config"]
    bad = {**cfg, "rl_train": {**cfg["rl_train"], "steps": -1}}
    (err,) = _errors(form["schema"], {"config": bad})
    assert "\n" not in err and "'config.rl_train.steps'" in err, err
