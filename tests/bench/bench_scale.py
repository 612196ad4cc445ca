"""Benchmark (issue #17): difficulty estimation on 1 and 2 Ray workers (one thread each) against one
local process with two threads, in the same run, through ``posttrain run`` as a user runs it.

Arms, each recomputing ``estimate_difficulty`` (``refresh``) in one state folder (model and data
are cache hits after the first arm):

- ``local-2threads``: ``POSTTRAIN_EXECUTOR=local``, ``POSTTRAIN_THREADS=2``, one task;
- ``ray-1worker``: a Ray head with one CPU, ``estimate_difficulty.shards=2``, one thread per task;
- ``ray-2workers``: the same cluster with a second one-CPU node joined (two shards at once).

The figure per arm is the stage's wall time (first shard start to merge end, from the MLflow
child runs), which includes Ray's scheduling and each worker's cold start (a new driver's
workers import torch and transformers again); the CLI's wall time is reported too. The merged
difficulty digest of every arm must be the same.

    python tests/bench/bench_scale.py --tiny [--prompts 256 --digits 2 --set estimate_difficulty.max_new_tokens=32]
    python tests/bench/bench_scale.py --model /work/smollm2 [--prompts 64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "flows"))

from ray_cluster import RAY_ENV, RayCluster, clean_env  # noqa: E402


def _stage_wall(state: Path, parent: str) -> float:
    """First start to last end of the difficulty stage's child runs (shards and merge)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
    exp = client.get_run(parent).info.experiment_id
    runs = [r for r in client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
            if r.data.tags.get("stage", "").startswith("estimate_difficulty")]
    return (max(r.info.end_time for r in runs) - min(r.info.start_time for r in runs)) / 1000.0


def run_arm(name: str, state: Path, args: list[str], env: dict) -> dict:
    summary = state.parent / f"{name}.json"
    cmd = [sys.executable, "-m", "flows.cli", "run", *args, "--stages", "estimate_difficulty",
           "--set", "estimate_difficulty.refresh=true", "--summary", str(summary)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{name} failed:\n{r.stderr[-3000:]}")
    s = json.loads(summary.read_text())
    st = s["stages"]
    shards = {k: v["compute_seconds"] for k, v in st.items() if k.startswith("estimate_difficulty:")}
    return {"cli_wall_s": wall, "stage_wall_s": _stage_wall(state, s["mlflow_run_id"]),
            "shard_compute_s": shards, "merge_or_estimate_compute_s": st["estimate_difficulty"]["compute_seconds"],
            "difficulty_sha256": st["estimate_difficulty"]["outputs"]["difficulty"]["sha256"],
            "prompts": st["estimate_difficulty"]["metrics"].get("prompts"),
            "samples_used": st["estimate_difficulty"]["metrics"].get("samples_used")}


def main() -> None:
    ap = argparse.ArgumentParser()
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", type=Path, help="model folder (e.g. /work/smollm2): the default recipe on it")
    g.add_argument("--tiny", action="store_true", help="the smoke recipe's tiny random model")
    ap.add_argument("--prompts", type=int, default=None, help="size of the arithmetic prompt pool to curate")
    ap.add_argument("--digits", type=int, default=1, help="digits of the arithmetic operands (2: more distinct prompts)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="more recipe overrides (key=value)")
    ap.add_argument("--out", type=Path, default=ROOT / "tests/bench/results/scale.json")
    a = ap.parse_args()
    os.environ.update(RAY_ENV)  # this process reads Ray's state API
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    state = work / "state"
    recipe = ["--recipe", "smoke"] if a.tiny else ["--recipe", "default", "--set", f"model.source={a.model}"]
    if a.prompts:
        recipe += ["--set", "curate.sources=[{type: arithmetic, name: arith, n: %d, digits: %d, "
                   "operators: ['+', '*'], num_ops: 1, seed: 0}]" % (a.prompts, a.digits)]
    for o in a.overrides:
        recipe += ["--set", o]
    base = {**clean_env(), **RAY_ENV, "PYTHONPATH": str(ROOT), "POSTTRAIN_STATE_DIR": str(state),
            "POSTTRAIN_PREFECT_API_URL": "http://127.0.0.1:9/api"}
    res: dict = {"recipe": recipe, "loadavg_start": os.getloadavg(), "cpus": os.cpu_count(), "arms": {}}
    cluster = RayCluster(Path(tempfile.mkdtemp(prefix="r17b-", dir="/tmp")))
    try:
        res["arms"]["local-2threads"] = run_arm("local-2threads", state, recipe,
                                                {**base, "POSTTRAIN_THREADS": "2"})
        cluster.start_head()
        ray_env = {**base, "POSTTRAIN_THREADS": "1", "POSTTRAIN_EXECUTOR": "ray", "POSTTRAIN_RAY_ADDRESS": cluster.address}
        sharded = [*recipe, "--set", "estimate_difficulty.shards=2"]
        res["arms"]["ray-1worker"] = run_arm("ray-1worker", state, sharded, ray_env)
        cluster.join_node()
        cluster.wait_nodes(2)
        res["arms"]["ray-2workers"] = run_arm("ray-2workers", state, sharded, ray_env)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    arms = res["arms"]
    res["same_digest"] = len({v["difficulty_sha256"] for v in arms.values()}) == 1
    loc, r1, r2 = (arms[k]["stage_wall_s"] for k in ("local-2threads", "ray-1worker", "ray-2workers"))
    res["ratios"] = {"ray2_speedup_over_ray1": r1 / r2, "ray2_speedup_over_local_2threads": loc / r2,
                     "ray1_speedup_over_local_2threads": loc / r1}
    res["loadavg_end"] = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "shard_compute_s"} for k, v in arms.items()}, indent=1))
    print(json.dumps({"same_digest": res["same_digest"], **res["ratios"]}, indent=2))


if __name__ == "__main__":
    main()
