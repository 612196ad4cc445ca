"""Typed run parameters: what a run of the pipeline takes besides a whole recipe.

They type the flow parameters, so the Prefect UI's run form shows the recipe as a list of the
built-in recipes and the YAML files under ``POSTTRAIN_RECIPES_DIR``, the stages as a list of
stage names and each override as a checked ``key=value`` item; the server refuses anything else
before a run is created. Called directly (``posttrain run --recipe my.yaml``), a flow still
takes any recipe path: only the JSON schema carries the lists, the Python types are ``str``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, WithJsonSchema

from components.recipe import STAGES, builtin_recipes

OVERRIDE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*="  # then any value (YAML), newlines too
REPO_ROOT = Path(__file__).resolve().parents[1]


def recipe_files(folder: Path) -> list[str]:
    """YAML recipes under ``folder``, as paths a flow run can open: relative to the repository
    root (where deployed flow runs start) when they lie inside it, else absolute."""
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        return []
    out = []
    for p in sorted([*root.rglob("*.yaml"), *root.rglob("*.yml")]):
        try:
            out.append(str(p.relative_to(REPO_ROOT)))
        except ValueError:
            out.append(str(p))
    return out


def recipe_choices(folder: Path | None = None) -> list[str]:
    """Built-in recipe names, then the files under the configured recipes folder."""
    if folder is None:
        from components.settings import get_settings

        folder = get_settings().recipes_dir
    return [*builtin_recipes(), *recipe_files(folder)]


def recipe_name_type(choices: list[str]) -> object:
    """``str`` whose JSON schema is an enum of ``choices`` (a drop-down in the Prefect UI)."""
    return Annotated[str, WithJsonSchema({"type": "string", "enum": list(choices)})]


# A string whose schema lists the stages: the UI offers a multi-select and the server refuses
# other names; a direct call gets the flow's own "unknown stage(s) ...; allowed: ..." message.
StageName = Annotated[str, WithJsonSchema({"type": "string", "enum": list(STAGES)})]
Override = Annotated[str, Field(pattern=OVERRIDE_PATTERN, description="key=value, e.g. rl_train.steps=20")]
