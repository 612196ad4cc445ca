"""Kill a run in the middle of RL and start the same command again: it continues from the last
finished segment and ends with bitwise the same weights as an uninterrupted run (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Eight one-step segments. On a quiet machine a tiny-model segment takes about 0.15 s, so the test
# polls every 10 ms and kills at once (a 0.5 s grace once let all six segments of an earlier version
# finish first); the resume check below already allows for the cache entry of the last finished
# segment not being persisted yet.
SEGMENTS = 8
ARGS = ["--recipe", "smoke", "--set", f"rl_train.steps={SEGMENTS}", "--set", "rl_train.segment_steps=1",
        "--stages", "rl_train"]


def _cmd(summary: Path) -> list[str]:
    return [sys.executable, "-m", "flows.post_training", *ARGS, "--summary", str(summary)]


def _env(state: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "POSTTRAIN_"))}
    env["POSTTRAIN_STATE_DIR"] = str(state)
    env["POSTTRAIN_PREFECT_API_URL"] = "http://127.0.0.1:9/api"  # nothing answers: ephemeral Prefect
    return env


def _weights_digest(summary: Path) -> str:
    from components.artifacts import sha256_file

    s = json.loads(summary.read_text())
    ckpt = Path(s["stages"]["rl_train"]["outputs"]["checkpoint"]["uri"])
    return sha256_file(ckpt / "model" / "model.safetensors")


def _finished_segments(state: Path) -> int:
    return len(list((state / "artifacts" / "rl_train").glob("*/_ref.json")))


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tmp_path):
    cwd = Path(__file__).resolve().parents[2]
    a, b = tmp_path / "a", tmp_path / "b"
    subprocess.run(_cmd(tmp_path / "a.json"), env=_env(a), cwd=cwd, check=True, timeout=900,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    proc = subprocess.Popen(_cmd(tmp_path / "b1.json"), env=_env(b), cwd=cwd, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while _finished_segments(b) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _finished_segments(b)
    assert 2 <= killed_at < SEGMENTS

    subprocess.run(_cmd(tmp_path / "b2.json"), env=_env(b), cwd=cwd, check=True, timeout=900,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed = json.loads((tmp_path / "b2.json").read_text())["stages"]["rl_train"]["metrics"]
    # Finished segments are not recomputed (the last one may have been killed between writing
    # its checkpoint and Prefect persisting its cache entry).
    assert 1 <= resumed["segments_cached"] <= killed_at
    assert resumed["segments_cached"] >= killed_at - 1
    assert _weights_digest(tmp_path / "b2.json") == _weights_digest(tmp_path / "a.json")
