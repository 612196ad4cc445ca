"""Per-step RL metrics: one flat dict per step, logged to MLflow and kept in the checkpoint history.

Names are stable (MLflow charts, ``components.summary.RL_HEADLINE`` aliases such as ``reward/mean``
and ``train/kl``, and the order of ``metrics.jsonl``, which is part of the checkpoint's digest):
add new ones at the end.
"""

from __future__ import annotations

import resource
import time

import numpy as np
import torch

from components.difficulty.online import OnlineTracker
from components.rl.batch import TrainBatch
from components.rl.collector import RolloutBatch
from components.rl.learner import UpdateResult


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rollout_metrics(batch: RolloutBatch, tracker: OnlineTracker) -> dict[str, float]:
    flat_r = torch.tensor([x for r in batch.rewards for x in r], dtype=torch.float32)
    lengths = [s.num_tokens for s in batch.samples]
    truncated = [s.finish_reason == "length" for s in batch.samples]
    return {
        "reward_mean": float(flat_r.mean()),
        "reward_std": float(flat_r.std(unbiased=False)),
        "pass_rate": float((flat_r >= 0.5).float().mean()),
        "response_len_mean": float(np.mean(lengths)),
        "response_len_max": float(max(lengths)),
        "truncated_frac": float(np.mean(truncated)),
        "zero_variance_frac": batch.zero_variance_seen / max(1, batch.groups_seen),
        "groups_sampled": float(batch.groups_seen),
        "batch_mean_difficulty": float(np.mean([1 - tracker.posterior(g.row["id"]).mean for g in batch.groups])),
    }


def step_metrics(batch: RolloutBatch, tb: TrainBatch, upd: UpdateResult, tracker: OnlineTracker,
                 reward_errors: int, policy_version: int, epochs: int, started: float) -> dict[str, float]:
    """The figures of one step: rollouts, throughput and timings, the loss's per-micro-batch stats
    (mean; max for ``*_max``), and the partial-rollout figures. ``started``: ``perf_counter`` at the
    step's start; ``policy_version``: the engine's version while it sampled this step."""
    m = _rollout_metrics(batch, tracker)
    m.update({
        "grad_norm": float(np.mean(upd.grad_norms)) if upd.grad_norms else 0.0,
        "gen_tokens_per_s": batch.gen_tokens / max(batch.gen_seconds, 1e-9),
        "train_tokens_per_s": float(tb.resp_mask.sum()) * epochs / max(upd.seconds, 1e-9),
        "time_generate_s": batch.gen_seconds,
        "time_score_s": batch.score_seconds,
        "time_update_s": upd.seconds,
        "time_step_s": time.perf_counter() - started,
        "reward_errors": float(reward_errors),
    })
    for k, v in upd.stats.items():
        m[k] = float(np.max(v) if k.endswith("_max") else np.mean(v))
    m["max_new_tokens"] = float(batch.budget)
    m["stale_token_frac"] = float((tb.versions < policy_version).float().mul(tb.resp_mask).sum()
                                  / tb.resp_mask.sum().clamp(min=1))
    m.update({k: float(v) for k, v in batch.extra.items() if isinstance(v, (int, float))})
    return m
