"""What the promise tests share: the real ``posttrain`` CLI in a subprocess, each run in its own
empty state folder (its own Prefect and MLflow), and the one smoke run several promises reuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import components  # noqa: E402 - where the code under test lives (PYTHONPATH may point elsewhere)

REPO = Path(components.__file__).resolve().parents[1]
# Eight one-step RL segments, so a run can be killed between segments (see test_kill_resume.py).
SEGMENTS = 8
SMOKE_ARGS = ["--recipe", "smoke", "--set", f"rl_train.steps={SEGMENTS}", "--set", "rl_train.segment_steps=1"]
TIMEOUT_S = 1200


def posttrain_cmd(*args: str) -> list[str]:
    """The installed console script when there is one (what a user types), else its module."""
    script = Path(sys.executable).parent / "posttrain"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "flows.cli", *args]


def cli_env(state: Path, code_root: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "POSTTRAIN_"))}
    env["POSTTRAIN_STATE_DIR"] = str(state)
    env["POSTTRAIN_PREFECT_API_URL"] = "http://127.0.0.1:9/api"  # nothing answers: ephemeral Prefect
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    # A shared CI machine under load can take minutes to start the ephemeral Prefect server.
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "600"
    if code_root is not None:
        env["PYTHONPATH"] = str(code_root)
    return env


def start_run(state: Path, summary: Path, *extra: str, code_root: Path | None = None, **popen) -> subprocess.Popen:
    log = open(summary.with_suffix(".log"), "w")
    return subprocess.Popen(posttrain_cmd("run", *SMOKE_ARGS, *extra, "--summary", str(summary)),
                            env=cli_env(state, code_root), cwd=code_root or REPO, stdout=log,
                            stderr=subprocess.STDOUT, **popen)


def finish(proc: subprocess.Popen, summary: Path) -> dict:
    rc = proc.wait(timeout=TIMEOUT_S)
    assert rc == 0, f"posttrain run failed ({rc}): {summary.with_suffix('.log').read_text()[-3000:]}"
    return json.loads(summary.read_text())


def run(state: Path, summary: Path, *extra: str, code_root: Path | None = None) -> dict:
    return finish(start_run(state, summary, *extra, code_root=code_root), summary)


def digests(summary: dict) -> dict[str, str]:
    """sha256 of every stage output a run summary reports, by stage and output."""
    return {f"{stage}/{name}": ref["sha256"]
            for stage, s in summary["stages"].items() for name, ref in s["outputs"].items()}


_SHARED: dict[str, tuple[Path, dict]] = {}


def shared_runs(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Two uninterrupted smoke runs, one after the other, each in an empty state folder; made
    once per test session: {"a": (state folder, summary), "b": ...}. Tests may add runs to a
    state folder but never change the summaries."""
    if not _SHARED:
        root = tmp_path_factory.mktemp("promise-runs")
        for n in ("a", "b"):
            _SHARED[n] = (root / n, run(root / n, root / f"{n}.json"))
    return _SHARED
