"""Persist each step's rollouts as Parquet: what was generated, by which policy, and its reward;
multi-turn episodes also with their turns (and ``transcripts_markdown`` renders a few readably)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from components.engines.base import Sample


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
                **_episode_fields(s),
            })
    return out


def _episode_fields(s: Sample) -> dict:
    """A multi-turn episode's turns (JSON chat messages), loss mask and counts; nothing for single-turn
    samples (their rollout files keep their exact bytes)."""
    if s.turns is None:
        return {}
    ep = s.episode or {}
    return {
        "turns": json.dumps(s.turns, ensure_ascii=False),
        "token_ids": list(s.token_ids),
        "loss_mask": list(s.loss_mask or []),
        "model_tokens": int(sum(s.loss_mask or [])),
        "tool_calls": int(ep.get("tool_calls", 0)),
        "assistant_turns": int(ep.get("assistant_turns", 0)),
        "end_reason": str(ep.get("end_reason")),
    }


def write_rollouts(path: Path, step: int, groups: list, rewards: list[list[float]], policy_version: int) -> Path:
    recs = rollout_records(step, groups, rewards, policy_version)
    pq.write_table(pa.Table.from_pylist(recs), path)
    return path


def transcript_markdown(rec: dict) -> str:
    """One stored episode as readable markdown: a heading per turn (system/user/assistant/tool)."""
    head = (f"## prompt {rec['prompt_id']} · sample {rec['sample_index']} · reward {rec['reward']:g} · "
            f"{rec.get('tool_calls', 0)} tool call(s) · ended: {rec.get('end_reason')}\n")
    parts = [head]
    for t in json.loads(rec["turns"]):
        body = str(t.get("content", "")).replace("```", "ʼʼʼ")
        parts.append(f"**{t.get('role', '?')}**\n\n```text\n{body}\n```\n")
    return "\n".join(parts)


def transcripts_markdown(records: list[dict], k: int) -> str:
    """Up to ``k`` episodes of one step (those with tool calls first, then the rest, in stored order)."""
    eps = [r for r in records if r.get("turns")]
    chosen = sorted(eps, key=lambda r: (r.get("tool_calls", 0) == 0,))[:k]
    if not chosen:
        return ""
    step = chosen[0]["step"]
    return f"# Transcripts, step {step}\n\n" + "\n---\n\n".join(transcript_markdown(r) for r in chosen)
