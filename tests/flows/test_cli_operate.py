"""CLI details a new user meets first: `posttrain --version`, help on every option of the
operate commands, no MLflow dataset-source warning when a dataset is logged, and a stale
`ui.json` (its `posttrain ui` is gone) never sends a command to a dead server."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
POSTTRAIN = str(Path(sys.executable).parent / "posttrain")


def test_version_names_posttrain_and_its_libraries():
    out = subprocess.run([POSTTRAIN, "--version"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"posttrain {version('posttrain')} (prefect {version('prefect')}, ")
    assert f"sqlalchemy {version('sqlalchemy')}" in out.stdout


def test_every_option_of_the_operate_commands_has_help():
    import typer

    from flows.cli import app

    group = typer.main.get_command(app)
    assert any(p.name == "version" and p.help for p in group.params)
    for name in ("ui", "serve-flows", "work-pool", "deploy-flows"):
        opts = [p for p in group.commands[name].params if isinstance(p, typer.core.TyperOption)]
        assert opts and all(p.help for p in opts), (name, [p.name for p in opts if not p.help])


def test_logging_a_dataset_warns_nothing(tmp_path):
    from components.settings import Settings
    from components.tracking import Tracker

    (tmp_path / "data").mkdir()
    pd.DataFrame({"prompt": ["1+1"], "answer": ["2"]}).to_parquet(tmp_path / "data" / "part-0.parquet")
    trk = Tracker(Settings(state_dir=tmp_path / "state"))
    run = trk.start_run("curate")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trk.log_dataset(run, tmp_path / "data", "train", "ab" * 32, "training")
    assert [str(w.message) for w in seen if issubclass(w.category, UserWarning)] == []
    (ds,) = trk.client.get_run(run).inputs.dataset_inputs
    assert ds.dataset.name == "train"


def test_a_stale_ui_record_is_ignored(tmp_path):
    """A `posttrain ui` killed with SIGKILL leaves ui.json behind: its pid is gone, so the next
    command goes ephemeral and says so, instead of waiting on or using a dead server."""
    from components.ui_record import read_record, record_path

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    state = tmp_path / "state"
    state.mkdir()
    record_path(state).write_text(json.dumps({"pid": int(dead.stdout), "prefect_api_url": "http://127.0.0.1:9/api",
                                              "mlflow_ui_url": "http://127.0.0.1:9"}))
    assert read_record(state) is None
    code = ("from components.settings import configure_process_env, prefect_server_note; "
            "configure_process_env(); print(prefect_server_note())")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("PREFECT_", "POSTTRAIN_"))}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "POSTTRAIN_STATE_DIR": str(state)},
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Prefect server: ephemeral"), out.stdout
