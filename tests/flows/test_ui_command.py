"""`posttrain ui` starts the Prefect and MLflow servers, prints both URLs, and Ctrl-C (SIGINT)
stops both: their ports stop answering and their process groups are gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from components.ui import group_alive

REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4 of /proc/PID/stat: the parent pid
            out.append(int(stat.parent.name))
    return out


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False



@pytest.mark.slow
def test_ui_starts_both_servers_and_sigint_stops_them(tmp_path):
    from components.serving.vllm_server import find_free_port

    pp = find_free_port()
    mp = find_free_port()
    while mp == pp:
        mp = find_free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "POSTTRAIN_"))}
    env.update(POSTTRAIN_STATE_DIR=str(tmp_path / "state"), POSTTRAIN_PREFECT_API_URL="http://127.0.0.1:9/api")
    cmd = [str(Path(sys.executable).parent / "posttrain"), "ui", "--prefect-port", str(pp), "--mlflow-port", str(mp)]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    groups: list[int] = []
    try:
        lines = []
        for line in proc.stdout:  # the URLs are printed once both servers answer
            lines.append(line.strip())
            if line.startswith("Ctrl-C"):
                break
        assert f"Prefect UI: http://127.0.0.1:{pp}" in lines, lines
        assert f"MLflow UI:  http://127.0.0.1:{mp}" in lines, lines
        groups = _children(proc.pid)  # each server leads its own process group
        assert len(groups) == 2
        urls = [f"http://127.0.0.1:{pp}/api/health", f"http://127.0.0.1:{mp}/health"]
        assert all(_answers(u) for u in urls)
        ui_settings = httpx.get(f"http://127.0.0.1:{pp}/ui-settings", timeout=5).json()
        assert ui_settings["api_url"] == f"http://127.0.0.1:{pp}/api"  # the browser calls this port

        os.kill(proc.pid, signal.SIGINT)
        # stop_uis gives the servers 30 s to go, then kills; slack for a loaded machine.
        assert proc.wait(timeout=180) == 0
        assert not any(_answers(u) for u in urls)
        assert not any(group_alive(g) for g in groups)
    finally:
        for pgid in [proc.pid, *groups]:
            if group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)
        proc.wait()
