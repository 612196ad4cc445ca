"""Two `posttrain run --recipe smoke` processes started together on one state folder compute each
stage once: the second waits on the first one's stage lock and then reads its result as a cache hit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]


def _env(state: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "POSTTRAIN_", "AWS_", "MLFLOW_"))}
    env["POSTTRAIN_STATE_DIR"] = str(state)
    env["POSTTRAIN_PREFECT_API_URL"] = "http://127.0.0.1:9/api"  # nothing answers: ephemeral Prefect
    return env


def _computed_segments(stage: dict) -> int:
    m = stage["metrics"]
    return int(m["segments"] - m["segments_cached"])


@pytest.mark.slow
def test_two_simultaneous_runs_compute_each_stage_once(tmp_path):
    from components.settings import Settings
    from components.tracking import Tracker

    state = tmp_path / "state"
    # The second process starts its Prefect server after the first (one boot at a time migrates the
    # database), ~20 s behind on a loaded machine: a longer difficulty estimate (~30 s) keeps the two
    # runs overlapping on a stage, so the lock is really exercised.
    longer = ["--set", "estimate_difficulty.max_new_tokens=32", "--set", "estimate_difficulty.min_samples=8",
              "--set", "estimate_difficulty.max_samples=8"]
    cmds = [[sys.executable, "-m", "flows.cli", "run", "--recipe", "smoke", *longer,
             "--summary", str(tmp_path / f"{n}.json")] for n in ("a", "b")]
    logs = [open(tmp_path / f"{n}.log", "wb") for n in ("a", "b")]
    t0 = time.monotonic()
    procs = [subprocess.Popen(c, env=_env(state), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True) for c, log in zip(cmds, logs)]
    try:
        codes = [p.wait(timeout=1200) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
        for log in logs:
            log.close()
    wall = time.monotonic() - t0
    tails = {n: (tmp_path / f"{n}.log").read_text(errors="replace")[-3000:] for n in ("a", "b")}
    assert codes == [0, 0], tails

    a, b = (json.loads((tmp_path / f"{n}.json").read_text())["stages"] for n in ("a", "b"))
    smoke = load_recipe("smoke")
    models = ["base", "rl", *(v.name for v in smoke.compress.variants)]
    # the stages, the compression variants and one evaluation pass task per model
    assert list(a) == list(b) and len(a) == 6 + len(models) + len(models) - 2
    for name in a:
        # Both runs hold the same payloads; every stage but rl_train was computed by exactly one
        # of them. rl_train is "cached" only when all its segments were, so when one run computed
        # segment 1 and the other segment 2 neither run reports it cached: counted per segment below.
        assert a[name]["outputs"] == b[name]["outputs"], name
        if name != "rl_train":
            assert [a[name]["cached"], b[name]["cached"]].count(False) == 1, name
    # rl_train is a chain of segments (smoke: 4 steps in segments of 2 = 2); each is computed once
    # over both runs, possibly some by one run and the rest by the other.
    n_seg = int(a["rl_train"]["metrics"]["segments"])
    assert n_seg == int(b["rl_train"]["metrics"]["segments"]) >= 1
    assert _computed_segments(a["rl_train"]) + _computed_segments(b["rl_train"]) == n_seg

    # Evidence that the runs overlapped and the lock made one wait: for some stage, the run that
    # got the cache hit asked for it (MLflow child run start) before the other finished computing it.
    trk = Tracker(Settings(_env_file=None, state_dir=state))
    waited = []
    for name in a:
        if name == "rl_train":
            continue
        comp, hit = (a[name], b[name]) if not a[name]["cached"] else (b[name], a[name])
        c_run, h_run = trk.get_run(comp["mlflow_run_id"]), trk.get_run(hit["mlflow_run_id"])
        assert c_run.data.tags["cache_hit"] == "false" and h_run.data.tags["cache_hit"] == "true"
        if h_run.info.start_time < c_run.info.end_time:
            waited.append(name)
    assert waited, "the two runs never asked for the same stage at the same time"
    assert list((state / "locks").glob("*.lock")) == []  # every lock released
    sys.stderr.write(f"\n[concurrent] wall {wall:.1f} s for both runs; waited on {waited}\n")
