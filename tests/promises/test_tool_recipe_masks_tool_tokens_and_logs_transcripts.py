"""Promise: ``posttrain run --recipe smoke-tools`` trains through the calculator environment: the
rl_train MLflow run holds readable transcripts, and the environment's tokens between the model's
turns reach the RL batch with loss mask 0 (what the step's ``env/masked_tokens`` figure counts)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from mlflow import MlflowClient
from user_cli import mlflow_db, posttrain

from components.environments.chat import tool_turn_ids
from components.models import load_tokenizer


def _rl_run(state: Path):
    client = MlflowClient(f"sqlite:///{mlflow_db(state)}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if r.data.tags.get("stage") == "rl_train"]
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def test_smoke_tools_masks_environment_tokens_and_logs_transcripts(tmp_path):
    state = tmp_path / "state"
    r = posttrain(["run", "--recipe", "smoke-tools", "--summary", str(tmp_path / "s.json")], state, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    ckpt = Path(summary["stages"]["rl_train"]["outputs"]["checkpoint"]["uri"])
    last = sorted((ckpt / "rollouts").glob("step-*.parquet"))[-1]
    recs = pq.read_table(last).to_pylist()
    tok = load_tokenizer(ckpt / "model")

    # Every token between the model's turns is the environment's turn as the chat template renders
    # it, and carries loss mask 0; the model's own tokens carry 1.
    masked_total = 0
    for rec in recs:
        turns = json.loads(rec["turns"])
        env_turns = [t for t in turns[2:] if t["role"] in ("user", "tool")]  # after system + question
        masked = [t for t, m in zip(rec["token_ids"], rec["loss_mask"]) if m == 0]
        if rec["end_reason"] != "max_tokens":
            assert masked == [i for t in env_turns for i in tool_turn_ids(tok, [t])]
        assert rec["model_tokens"] == sum(rec["loss_mask"]) == len(rec["token_ids"]) - len(masked)
        masked_total += len(masked)
    assert masked_total > 0

    client, run = _rl_run(state)
    history = client.get_metric_history(run.info.run_id, "env/masked_tokens")
    step = recs[0]["step"]
    assert [m.value for m in history if m.step == step] == [float(masked_total)]
    files = [a.path for a in client.list_artifacts(run.info.run_id, "transcripts")]
    assert f"transcripts/step-{step:05d}.md" in files
    text = Path(client.download_artifacts(run.info.run_id, f"transcripts/step-{step:05d}.md", str(tmp_path))).read_text()
    for role in ("system", "user", "assistant"):
        assert f"**{role}**" in text
    shown = [rec for rec in recs if f"## prompt {rec['prompt_id']} · sample {rec['sample_index']} " in text]
    assert shown and all(t["content"].replace("```", "ʼʼʼ") in text for rec in shown
                         for t in json.loads(rec["turns"]))
