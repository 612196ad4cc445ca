"""Benchmark (issue #4): difficulty-aware against uniform prompt sampling on a real recipe.

Runs the flow twice up to ``evaluate`` (no compression variants, no deploy) on the same
recipe, state folder and seeds, so both arms share prepare_model and curate (cache hits) and
train for the same number of RL steps with the same rollouts per step:

- ``difficulty``: the recipe as written (offline estimate -> selection drops always-solved
  prompts, keeps a share of never-solved ones, weights the rest by p(1-p));
- ``uniform``: ``estimate_difficulty.enabled=false``: every curated training prompt, drawn
  uniformly.

Reported per arm: the per-step fraction of zero-variance groups (groups whose rewards are all
equal, i.e. no GRPO gradient) and its mean over all steps, held-out greedy pass@1 and sampled
pass@1 of the RL checkpoint (and of the base model, which both arms share), and, for the
difficulty arm, the samples sequential estimation used against fixed k for the same buckets.

    python tests/bench/bench_difficulty.py [--recipe default] [--state-dir .posttrain] \
        [--out tests/bench/results/difficulty.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[2]

ARMS = {
    "difficulty": [],
    "uniform": ["estimate_difficulty.enabled=false"],
}


def _local(uri: str) -> Path:
    p = urlparse(uri)
    return Path(p.path if p.scheme == "file" else uri)


def run_arm(name: str, recipe: str, extra: list[str], state_dir: Path, work: Path) -> dict:
    summary = work / f"summary-{name}.json"
    # ``-m flows.cli`` from ROOT: the code of this checkout, even when the venv's editable
    # install points at another one (a snapshot can be benchmarked while the tree changes).
    cmd = [sys.executable, "-m", "flows.cli", "run", "--recipe", recipe, "--stages", "evaluate",
           "--summary", str(summary), "--set", "compress.variants=[]"]
    for s in extra:
        cmd += ["--set", s]
    env = {**os.environ, "POSTTRAIN_STATE_DIR": str(state_dir)}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    wall = time.perf_counter() - t0
    s = json.loads(summary.read_text())
    st = s["stages"]
    ckpt = _local(st["rl_train"]["outputs"]["checkpoint"]["uri"])
    history = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines() if line]
    zv = [h["zero_variance_frac"] for h in history]
    ev = st["evaluate"]["metrics"]
    out = {
        "overrides": extra,
        "wall_s": wall,
        "rl_seconds": st["rl_train"]["compute_seconds"],
        "rl_cached": st["rl_train"]["cached"],
        "steps": len(history),
        "zero_variance_frac_per_step": zv,
        "zero_variance_frac_mean": sum(zv) / len(zv),
        "mean_reward_per_step": [h.get("reward_mean") for h in history],
        "base_greedy_pass1": ev.get("base.greedy_pass1"),
        "base_sampled_pass1": ev.get("base.pass_at_1_sampled"),
        "rl_greedy_pass1": ev.get("rl.greedy_pass1"),
        "rl_sampled_pass1": ev.get("rl.pass_at_1_sampled"),
    }
    if "estimate_difficulty" in st:
        m = st["estimate_difficulty"]["metrics"]
        out["estimate"] = {k: m.get(k) for k in ("samples_used", "samples_fixed_k", "samples_saved",
                                                  "saved_fraction", "count_solved", "count_easy", "count_learnable", "count_hard", "count_unsolved") if k in m}
        out["estimate"]["cached"] = st["estimate_difficulty"]["cached"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--state-dir", type=Path, default=ROOT / ".posttrain")
    ap.add_argument("--arms", default="difficulty,uniform")
    ap.add_argument("--out", type=Path, default=ROOT / "tests/bench/results/difficulty.json")
    a = ap.parse_args()
    work = a.state_dir / "bench-difficulty"
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"recipe": a.recipe, "loadavg_start": os.getloadavg(), "arms": {}}
    for name in a.arms.split(","):
        res["arms"][name] = run_arm(name, a.recipe, ARMS[name], a.state_dir.resolve(), work)
        print(json.dumps({name: {k: v for k, v in res["arms"][name].items() if not k.endswith("per_step")}}, indent=1))
    arms = res["arms"]
    if {"difficulty", "uniform"} <= arms.keys():
        d, u = arms["difficulty"], arms["uniform"]
        res["ratios"] = {
            "zero_variance_frac_difficulty_over_uniform": d["zero_variance_frac_mean"] / max(1e-9, u["zero_variance_frac_mean"]),
            "rl_greedy_pass1_delta_pts": d["rl_greedy_pass1"] - u["rl_greedy_pass1"],
            "rl_sampled_pass1_delta_pts": d["rl_sampled_pass1"] - u["rl_sampled_pass1"],
        }
    res["loadavg_end"] = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res.get("ratios", {}), indent=2))


if __name__ == "__main__":
    main()
