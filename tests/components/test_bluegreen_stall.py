"""A vLLM start that stalls (the DP coordinator's 120 s ZMQ timeout under load: the process lives on
but never answers) fails fast, and blue/green tries it once more before giving up.

The stand-in for ``.venv-vllm/bin/python`` is a script: its first ``STALLS`` starts print vLLM's
own stall line and hang; later starts serve the model with posttrain's transformers-engine
OpenAI server (a real HTTP server the deployer health-checks and smoke-tests)."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import httpx
import pytest

from components.serving.bluegreen import BlueGreenDeployer, DeployError
from components.serving.vllm_server import StartupStalled, VLLMServer, VLLMServerConfig, stalled_line

REPO = Path(__file__).resolve().parents[2]
STALL = ("RuntimeError: DP Coordinator process failed to report ZMQ addresses within timeout=120 seconds "
         "during startup.")
SCRIPT = f"""#!/bin/bash
n=$(cat "$STARTS" 2>/dev/null || echo 0); echo $((n + 1)) > "$STARTS"
if [ "$n" -lt "$STALLS" ]; then echo "{STALL}"; exec sleep 600; fi
shift 2  # -m <vllm module>
while [ $# -gt 0 ]; do
  case $1 in
    --model) M=$2; shift 2;; --port) P=$2; shift 2;; --host) H=$2; shift 2;;
    --served-model-name) S=$2; shift 2;; *) shift;;
  esac
done
cd {REPO} && exec {sys.executable} -m components.serving.hf_server --model "$M" --port "$P" --host "$H" --served-model-name "$S"
"""


def _stand_in(tmp_path: Path, stalls: int) -> tuple[VLLMServerConfig, Path]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    py = venv / "bin" / "python"
    py.write_text(SCRIPT)
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    starts = tmp_path / "starts"
    cfg = VLLMServerConfig(venv=venv, log_dir=tmp_path / "logs", startup_timeout_s=120,
                           env={"STARTS": str(starts), "STALLS": str(stalls)})
    return cfg, starts


def test_stalled_line_reads_only_this_starts_part_of_the_log(tmp_path):
    log = tmp_path / "vllm.log"
    log.write_text(f"INFO start\n{STALL}\n")
    assert stalled_line(log) == STALL
    assert stalled_line(log, offset=log.stat().st_size) is None
    assert stalled_line(tmp_path / "missing.log") is None


def test_a_stalled_start_fails_fast_and_is_stopped(tmp_path, tiny_model_dir):
    cfg, _starts = _stand_in(tmp_path, stalls=1)
    server = VLLMServer(tiny_model_dir, cfg).start()
    t0 = time.monotonic()
    with pytest.raises(StartupStalled, match="DP Coordinator"):
        server.wait_healthy()
    assert time.monotonic() - t0 < 30  # not the 120 s health timeout
    assert server.proc is not None and server.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(server.proc.pid, 0)  # the whole group is gone


def test_blue_green_retries_a_stalled_start_once(tmp_path, tiny_model_dir):
    cfg, starts = _stand_in(tmp_path, stalls=1)
    deployer = BlueGreenDeployer(tmp_path / "state.json", cfg, drain_s=0)
    try:
        dep = deployer.deploy(tiny_model_dir, "v1")
        assert starts.read_text().strip() == "2"
        assert dep.smoke_completion_tokens > 0
        assert json.loads((tmp_path / "state.json").read_text())["deployments"]["default"]["pid"] == dep.pid
        assert httpx.get(dep.endpoint.removesuffix("/v1") + "/health", timeout=10).status_code == 200
        log = Path(dep.log_path).read_text()
        assert log.count("DP Coordinator") == 1 and "Traceback" not in log
    finally:
        deployer.stop_all()


def test_blue_green_gives_up_after_two_stalled_starts(tmp_path, tiny_model_dir):
    cfg, starts = _stand_in(tmp_path, stalls=2)
    deployer = BlueGreenDeployer(tmp_path / "state.json", cfg, drain_s=0)
    with pytest.raises(DeployError, match=r"failed \(nothing serving\).*stalled during startup"):
        deployer.deploy(tiny_model_dir, "v1")
    assert starts.read_text().strip() == "2"
    state = tmp_path / "state.json"
    assert not state.exists() or "default" not in json.loads(state.read_text())["deployments"]
    assert "DP Coordinator" in (tmp_path / "logs").joinpath(next(iter(os.listdir(tmp_path / "logs")))).read_text()
