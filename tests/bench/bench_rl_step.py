"""Benchmark: one whole RL step (generation + update) on a real model, as ``rl_train`` runs it.

``run_segment`` for one step: 8 prompts × 8 samples, 32 new tokens, T = 1, DAPO, one optimiser step
over the 64 rollouts in micro-batches of 16, fp32 (the ``default`` recipe's settings, with 32 new
tokens). Reported: the step's own time (``time_step_s``: generation, scoring, update) and its parts,
and the segment's wall time (model load, checkpoint, ``update_sparsity`` included). ``--code DIR``
runs another checkout's code (e.g. ``git archive`` of an older commit) with this same script, so a
before/after comparison differs only in the code; run them back to back and read the load average.

    python tests/bench/bench_rl_step.py --model /work/smollm2 [--code DIR] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see README, Settings)
SYSTEM = "Give only the final number."


def rows(k: int = 32) -> list[dict]:
    out = []
    for i in range(k):
        a, b = i % 9 + 1, (5 * i + 3) % 9 + 1
        op = "+" if i % 2 == 0 else "*"
        ans = a + b if op == "+" else a * b
        out.append({"id": f"q{i}", "prompt": f"What is {a} {op} {b}?", "answer": str(ans), "system": SYSTEM,
                    "task": "numeric", "meta": "{}"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[2])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(args.code.resolve()))
    import torch

    from components.recipe import RLConfig
    try:
        from components.rl.segment import run_segment
    except ImportError:  # --code older than the RL house (components/rl/trainer.py)
        from components.rl.trainer import run_segment  # type: ignore[no-redef]

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = RLConfig(steps=1, segment_steps=1, prompts_per_step=8, group_size=8, max_new_tokens=args.new_tokens,
                   temperature=1.0, lr=2e-6, minibatch_size=64, micro_batch_size=16,
                   loss={"variant": "dapo", "clip_low": 0.2, "clip_high": 0.28})
    load_before = os.getloadavg()
    logged: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run_segment(base_model_dir=args.model, init_checkpoint=None, rows=rows(), weights=None, difficulty=None,
                    cfg=cfg, start_step=0, end_step=1, out_dir=Path(d) / "seg",
                    log_metrics=lambda m, s: logged.append(m))
        wall = time.perf_counter() - t0
    m = logged[0]
    keys = ("time_step_s", "time_generate_s", "time_score_s", "time_update_s", "gen_tokens_per_s",
            "response_len_mean", "reward_mean")
    result = {"code": str(args.code), "threads": torch.get_num_threads(), "segment_wall_s": wall,
              **{k: m[k] for k in keys}, "load_average_before": load_before, "load_average_after": os.getloadavg()}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
