"""Persist each step's rollouts as Parquet: what was generated, by which policy, and its reward."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def rollout_records(step: int, groups: list, rewards: list[list[float]], policy_version: int) -> list[dict]:
    out = []
    for (row, _pids, samples), rw in zip(groups, rewards):
        for s, r in zip(samples, rw):
            out.append({
                "step": step,
                "prompt_id": row["id"],
                "sample_index": s.sample_index,
                "prompt": row["prompt"],
                "answer": row["answer"],
                "text": s.text,
                "num_tokens": s.num_tokens,
                "reward": float(r),
                "finish_reason": s.finish_reason,
                "policy_version": int(min(s.versions)) if s.versions else policy_version,
                "engine_logprob_sum": float(sum(s.logprobs)),
            })
    return out


def write_rollouts(path: Path, step: int, groups: list, rewards: list[list[float]], policy_version: int) -> Path:
    recs = rollout_records(step, groups, rewards, policy_version)
    pq.write_table(pa.Table.from_pylist(recs), path)
    return path
