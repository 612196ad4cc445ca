"""Promise: a stage's code version is derived from the modules it really imports, so editing a
module that a stage reaches only indirectly makes that stage, and only the stages downstream of
it, recompute; the stages upstream of it stay cache hits.

The edit is made in a temporary copy of the code (the CLI runs with PYTHONPATH pointing at it)
against the state folder of an earlier run of the unedited code.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from smoke_cli import REPO, run, shared_runs

# The difficulty stage imports components.engines.base and components.engines.transformers_engine;
# importing them runs the package module components/engines/__init__.py, which the stage never imports
# itself. Every stage downstream reaches it too (engines, prompt format); model preparation and
# curation, upstream, do not.
EDITED = Path("components/engines/__init__.py")
EDITED_MODULE = "components.engines"
ORDER = ["prepare_model", "curate", "estimate_difficulty", "rl_train", "compress", "evaluate_passes", "evaluate",
         "deploy"]
FIRST_AFFECTED = "estimate_difficulty"


def _copy_code(dst: Path) -> Path:
    for pkg in ("components", "kernels", "tasks", "flows"):
        shutil.copytree(REPO / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


@pytest.mark.slow
def test_editing_an_indirect_import_recomputes_that_stage_and_downstream_only(tmp_path_factory, tmp_path):
    state, first = shared_runs(tmp_path_factory)["a"]
    stage_src = (REPO / "components/stages/difficulty.py").read_text()
    named = {n.module for n in ast.walk(ast.parse(stage_src)) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(ast.parse(stage_src)) if isinstance(n, ast.Import) for a in n.names}
    assert EDITED_MODULE not in named  # the stage never imports the edited module itself...
    from components.caching import module_closure

    # ... and yet reaches it, as do the stages after it; the stages before it do not.
    for stage in ("difficulty", "rl", "compress", "evaluate", "deploy"):
        assert EDITED_MODULE in {m for m, _ in module_closure(f"components.stages.{stage}")}, stage
    for stage in ("prepare_model", "curate"):
        assert EDITED_MODULE not in {m for m, _ in module_closure(f"components.stages.{stage}")}, stage
    code = _copy_code(tmp_path / "code")
    edited = code / EDITED
    edited.write_text(edited.read_text() + "\n\n# an edit a reviewer would ask to re-run the difficulty estimate for\n")

    again = run(state, tmp_path / "edited.json", code_root=code)
    cached = {name: s["cached"] for name, s in again["stages"].items()}
    assert set(cached) == set(first["stages"])
    cut = ORDER.index(FIRST_AFFECTED)
    for name, hit in cached.items():
        upstream = ORDER.index(name.split(":")[0]) < cut
        assert hit == upstream, f"{name}: cached={hit}, expected {'hit' if upstream else 'recompute'}"
