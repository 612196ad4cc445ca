"""Benchmark: learning per sample. Which RL settings raise held-out accuracy most for one budget?

The same budget for every configuration: ``--steps`` (15) RL steps × 8 prompts × 8 samples, 32 new
tokens, T = 1, from the same base model, on one-digit ``+``/``*`` prompts. Prompts are all
``a op b`` with a, b in 1..9 (162), split once by a fixed seed into 64 held-out and 98 training
prompts. Each configuration is trained with each of ``--seeds`` (the RL sampling/shuffling seed) and
then evaluated: held-out sampled pass@1 over 64 prompts × 4 samples at T = 1, 32 new tokens, fixed
evaluation seed, scored by the ``numeric`` reward. The base model is evaluated the same way once,
so every gain is measured against the same figure in the same run.

Configurations (``CONFIGS``): ``baseline`` is plain GRPO (PPO-clip 0.2, sequence-mean loss, group
mean/std advantage, lr 5e-6, beta = 0, no warm-up); the others are posttrain's loss variants and
learning rates. Results are written after every run, so a cut sweep keeps what it measured.

    python tests/bench/bench_rl_defaults.py --model /work/smollm2 [--configs baseline,dapo-5e-6]
        [--seeds 0,1] [--steps 15] [--out tests/bench/results/rl_defaults.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see README, Settings)

import torch  # noqa: E402

from components.evaluation.runner import EvalConfig, sampled_pass  # noqa: E402
from components.prompts import messages_for  # noqa: E402
from components.rl.config import RLConfig  # noqa: E402
from components.rl.segment import run_segment  # noqa: E402
from components.scoring import RewardScorer  # noqa: E402
from components.stages.evaluate import make_generate  # noqa: E402

HELD_OUT = 64
BUDGET = {"prompts_per_step": 8, "group_size": 8, "max_new_tokens": 32, "temperature": 1.0,
          "minibatch_size": 64, "micro_batch_size": 16}
CONFIGS: dict[str, dict[str, Any]] = {
    "baseline": {"lr": 5e-6, "loss": {"variant": "grpo", "clip_low": 0.2, "clip_high": 0.2, "kl_coef": 0.0}},
    "dapo-2e-6": {"lr": 2e-6, "warmup_steps": 1, "loss": {"variant": "dapo", "clip_low": 0.2, "clip_high": 0.28}},
    "dapo-5e-6": {"lr": 5e-6, "warmup_steps": 1, "loss": {"variant": "dapo", "clip_low": 0.2, "clip_high": 0.28}},
    "dapo-1e-5": {"lr": 1e-5, "warmup_steps": 1, "loss": {"variant": "dapo", "clip_low": 0.2, "clip_high": 0.28}},
    "grpo-1e-5": {"lr": 1e-5, "loss": {"variant": "grpo", "clip_low": 0.2, "clip_high": 0.2}},
}
EVAL = EvalConfig(k=4, temperature=1.0, max_new_tokens=32, greedy=False, seed=1234)


def split() -> tuple[list[dict], list[dict]]:
    """All one-digit ``a + b`` and ``a * b`` prompts, shuffled once: (training, held-out)."""
    rows = []
    for op in ("+", "*"):
        for a in range(1, 10):
            for b in range(1, 10):
                ans = a + b if op == "+" else a * b
                rows.append({"id": f"{a}{op}{b}", "prompt": f"What is {a} {op} {b}? Give only the final number.",
                             "answer": str(ans), "system": None, "task": "numeric", "meta": "{}"})
    random.Random(0).shuffle(rows)
    return rows[HELD_OUT:], rows[:HELD_OUT]


def sampled_pass_at_1(model_dir: Path, held: list[dict]) -> float:
    """Held-out sampled pass@1 (mean correct fraction over ``EVAL.k`` samples a prompt)."""
    gen = make_generate(model_dir, "cpu", torch.float32)
    by_prompt = {r["prompt"]: messages_for(r) for r in held}
    scorer = RewardScorer()

    def generate(prompts, n, temperature, max_new_tokens, seed):
        return gen([by_prompt[p] for p in prompts], n, temperature, max_new_tokens, seed)

    res = sampled_pass(generate, held, lambda row, text: scorer(row, text), EVAL)
    return 100.0 * sum(res.correct) / (len(held) * EVAL.samples)


def train(model: Path, name: str, seed: int, steps: int, rows: list[dict], out: Path) -> dict[str, Any]:
    """``steps`` RL steps of configuration ``name`` in one segment; the trained model's folder and figures."""
    cfg = RLConfig.model_validate({**BUDGET, **CONFIGS[name], "steps": steps, "segment_steps": steps, "seed": seed})
    rewards: list[float] = []
    t0 = time.perf_counter()
    run_segment(base_model_dir=model, init_checkpoint=None, rows=rows, weights=None, difficulty=None, cfg=cfg,
                start_step=0, end_step=steps, out_dir=out, log_metrics=lambda m, s: rewards.append(m["reward_mean"]))
    return {"train_s": time.perf_counter() - t0, "reward_first": rewards[0], "reward_last": rewards[-1],
            "reward_mean": statistics.fmean(rewards)}


def summarize(runs: list[dict], base: float) -> dict[str, dict[str, float]]:
    """Per configuration: mean and spread of the gain over seeds."""
    out = {}
    for name in dict.fromkeys(r["config"] for r in runs):
        gains = [r["after"] - base for r in runs if r["config"] == name]
        out[name] = {"gain_mean": statistics.fmean(gains), "gain_min": min(gains), "gain_max": max(gains),
                     "seeds": len(gains)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--configs", default="baseline,dapo-2e-6,dapo-5e-6")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--out", type=Path, default=ROOT / "tests/bench/results/rl_defaults.json")
    args = ap.parse_args()
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"unknown configuration(s) {unknown}; known: {sorted(CONFIGS)}")
    train_rows, held = split()
    result: dict[str, Any] = {"budget": {**BUDGET, "steps": args.steps}, "eval": EVAL.model_dump(),
                              "held_out": len(held), "train_prompts": len(train_rows), "configs": CONFIGS,
                              "load_average_before": os.getloadavg(), "runs": []}
    result["base"] = sampled_pass_at_1(args.model, held)
    print(f"base sampled pass@1 {result['base']:.1f}", flush=True)
    for name in names:
        for seed in (int(s) for s in args.seeds.split(",")):
            with tempfile.TemporaryDirectory() as d:
                run = {"config": name, "seed": seed, **train(args.model, name, seed, args.steps, train_rows, Path(d))}
                run["after"] = sampled_pass_at_1(Path(d) / "model", held)
            run["gain"] = run["after"] - result["base"]
            result["runs"].append(run)
            result["summary"] = summarize(result["runs"], result["base"])
            result["load_average_after"] = os.getloadavg()
            args.out.write_text(json.dumps(result, indent=2))
            print(json.dumps(run), flush=True)
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
