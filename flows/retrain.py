"""Scheduled retraining: the post-training flow started from the registry's champion.

The champion's weights become the recipe's base model (``model.source``), so an unchanged
champion and unchanged data make every stage a cache hit, and a new champion or new data
recomputes only what depends on them. ``curate`` is re-read each time (``refresh_data``):
its cache key covers the recipe, not the content behind a file source, and an unchanged
pool yields the same dataset digest, so the stages after it still hit the cache.
"""

from __future__ import annotations

from components.settings import configure_process_env

configure_process_env()

from pathlib import Path  # noqa: E402

from prefect import flow, get_run_logger  # noqa: E402

from components.champion import resolve_champion  # noqa: E402
from components.recipe import load_recipe  # noqa: E402
from components.run_params import Override, StageName, recipe_choices, recipe_name_type  # noqa: E402
from flows.post_training import post_training  # noqa: E402
from tasks.common import store, tracker  # noqa: E402


def champion_model_dir(registered_model_name: str) -> Path | None:
    """Local folder of the champion's dense weights, or None when there is no usable champion.

    A compressed champion is retrained from its dense (fake-quantized / pruned) twin: that is
    the model being served, in the format the trainer loads.
    """
    champ = resolve_champion(tracker(), store(), registered_model_name)
    if champ is None or not (champ.model_dir / "config.json").exists():
        return None
    return champ.model_dir


RecipeName = recipe_name_type(recipe_choices())


@flow(name="recurring-retrain", log_prints=True)
def recurring_retrain(recipe: RecipeName = "default", overrides: list[Override] | None = None,
                      stages: list[StageName] | None = None, from_champion: bool = True,
                      refresh_data: bool = True) -> dict:
    """Retrain from the current champion on the latest data (runs on a cron schedule).

    Args:
        recipe: built-in recipe name or a YAML file under the recipes folder.
        overrides: recipe field overrides as key=value.
        stages: run up to the last of these stages; empty: the whole pipeline.
        from_champion: start from the registry's champion when there is one, else from the recipe's model.
        refresh_data: re-read the data sources (curate) so new rows are picked up.
    """
    log = get_run_logger()
    rec = load_recipe(recipe, overrides or [])
    extra: list[str] = []
    if from_champion:
        src = champion_model_dir(rec.deploy.registered_model_name)
        if src is not None:
            extra.append(f"model.source={src}")
            log.info("starting from the champion of %s at %s", rec.deploy.registered_model_name, src)
        else:
            log.info("no champion for %s: starting from %s", rec.deploy.registered_model_name, rec.model.source)
    if refresh_data:
        extra.append("curate.refresh=true")
    return post_training(recipe=recipe, overrides=[*(overrides or []), *extra], stages=stages)
