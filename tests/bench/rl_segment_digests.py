"""Digests of short RL segments on a tiny random model, one per trainer option set, as JSON.

A refactor of the RL stage must not change what a segment produces (same rollouts, same weights,
same per-step figures). Run this on two checkouts and compare the outputs:

    PYTHONHASHSEED=0 PYTHONPATH=/path/to/old OMP_WAIT_POLICY=PASSIVE python tests/bench/rl_segment_digests.py > old.json
    PYTHONHASHSEED=0 PYTHONPATH=$PWD OMP_WAIT_POLICY=PASSIVE python tests/bench/rl_segment_digests.py > new.json
    diff old.json new.json

Each case runs two one-step segments (the second resumes from the first), so checkpoint I/O and
resume are covered too. The reward scores 1 when a completion starts with a letter, so groups
have reward variance and every step updates the weights. The work folder has a fixed path
(``$TMPDIR/posttrain-rl-digests``) and the hash seed is fixed: a LoRA checkpoint's adapter config
names its base model's path and lists target modules in set order.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

ROWS = [{"id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i), "system": None,
         "task": "numeric", "meta": "{}"} for i in range(6)]
BASE = dict(steps=2, segment_steps=1, prompts_per_step=2, group_size=3, max_new_tokens=4, lr=1e-2,
            minibatch_size=3, micro_batch_size=2, epochs=2, seed=5)
CASES: dict[str, dict] = {
    "grpo": {},
    "grpo_plain_forward": {"share_prompts": False},
    "dapo_kl_entropy": {"loss": {"variant": "dapo", "clip_high": 0.28, "kl_coef": 0.1, "entropy_coef": 0.01}},
    "drgrpo": {"loss": {"variant": "drgrpo"}, "advantage": "drgrpo"},
    "gspo_loo_batchnorm": {"loss": {"variant": "gspo"}, "advantage": "loo", "batch_normalize": True},
    "dynamic_sampling": {"dynamic_sampling": True, "max_refill_rounds": 2},
    "partial_schedule_overlong": {"epochs": 1, "partial": {"enabled": True, "over_provision": 2.0, "chunk_tokens": 2},
                                  "length_schedule": {"kind": "linear", "start": 2, "end": 4, "period": 1},
                                  "overlong": {"buffer_len": 1, "penalty": 0.5}},
    "dars": {"rollout_allocation": "dars", "prompts_per_step": 3, "group_size": 4},
    "thompson": {"sampler": "thompson", "epochs": 1},
    "lora": {"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, "lr": 5e-2},
}


class LetterReward:
    version = "test"

    def __call__(self, text, answer, meta=None):
        from components.rewards import RewardResult

        return RewardResult(score=float(text[:1].isalpha()), parts={}, error=None)


def _patch_reward() -> None:
    try:
        import components.scoring as target
    except ImportError:  # before the RL house: the scorer lived in the trainer
        import components.rl.trainer as target  # type: ignore[no-redef]
    target.get_reward = lambda name: LetterReward()  # type: ignore[attr-defined]


def _run_segment():
    try:
        from components.rl.segment import run_segment
    except ImportError:
        from components.rl.trainer import run_segment  # type: ignore[no-redef]
    return run_segment


def main() -> None:
    from components.artifacts import sha256_dir
    from components.models import build_tiny_model
    from components.recipe import RLConfig

    _patch_reward()
    run_segment = _run_segment()
    only = set(sys.argv[1:])
    out: dict[str, dict[str, str]] = {}
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "posttrain-rl-digests"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model_dir = Path(tmp) / "tiny"
        build_tiny_model(model_dir, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=64, seed=0)
        for name, kw in CASES.items():
            if only and name not in only:
                continue
            cfg = RLConfig(**{**BASE, **kw})
            a, b = Path(tmp) / name / "a", Path(tmp) / name / "b"
            common = dict(base_model_dir=model_dir, rows=ROWS, weights=None, difficulty=None, cfg=cfg)
            run_segment(init_checkpoint=None, start_step=0, end_step=1, out_dir=a, **common)
            run_segment(init_checkpoint=a, start_step=1, end_step=2, out_dir=b, **common)
            out[name] = {"first": sha256_dir(a), "second": sha256_dir(b)}
            print(name, out[name], file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
