"""Promise: a user's mistake is reported before any work starts, in one line naming the cause and
the fix, exit code 2, the traceback in a log file whose path the line gives (``--debug`` prints it);
no Prefect flow run is created and earlier outputs and the registry are untouched."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from user_cli import flow_run_states, mlflow_db, posttrain, query

from components.recipe import STAGES

SMOKE = ["run", "--recipe", "smoke"]


def _source(path: str, kind: str = "jsonl") -> list[str]:
    return ["--set", f"curate.sources=[{{type: {kind}, name: mine, path: '{path}'}}]"]


def _snapshot(state: Path) -> tuple:
    files = sorted(str(p.relative_to(state)) for p in (state / "artifacts").rglob("*"))
    runs = query(mlflow_db(state), "select run_uuid, status from runs order by run_uuid")
    return files, runs, flow_run_states(state)


def _one_line_exit_2(r: subprocess.CompletedProcess, *words: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1, r.stderr[-3000:]
    for w in words:
        assert w in lines[0], lines[0]
    log = re.search(r"traceback: (\S+)\)", lines[0])
    assert log and "Traceback" in Path(log.group(1)).read_text()
    return lines[0]


def _read_only(path: Path, on: bool) -> None:
    """Read-only for everyone, root included (root ignores mode bits, not the immutable flag)."""
    if on:
        subprocess.run(["chmod", "-R", "a-w", str(path)], check=True)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-R", "+i" if on else "-i", str(path)], check=True)
    if not on:
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=True)


def test_mistakes_fail_before_work_in_one_line(tmp_path):
    state = tmp_path / "state"
    first = posttrain([*SMOKE, "--stages", "curate"], state)
    assert first.returncode == 0, first.stderr[-3000:]
    before = _snapshot(state)
    assert len(before[2]) == 1  # the one flow run of the first run

    line = _one_line_exit_2(posttrain([*SMOKE, "--stages", "curat"], state), "curat", "estimate_difficulty", "rl_train")
    assert "deploy" in line
    _one_line_exit_2(posttrain([*SMOKE, *_source(str(tmp_path / "nope.jsonl"))], state), "does not exist", "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    _one_line_exit_2(posttrain([*SMOKE, *_source(str(tmp_path / "empty.jsonl"))], state), "no usable rows", "mine")
    (tmp_path / "junk.jsonl").write_text('{"question": "no prompt field"}\nnot json\n')
    _one_line_exit_2(posttrain([*SMOKE, *_source(str(tmp_path / "junk.jsonl"))], state), "no usable rows", "bad_json")
    _one_line_exit_2(posttrain(SMOKE, state, POSTTRAIN_MIN_FREE_MB=str(10**12)), "MiB free", "posttrain gc")
    s3 = posttrain(SMOKE, state, POSTTRAIN_ARTIFACT_ROOT="s3://posttrain/x", POSTTRAIN_S3_ENDPOINT_URL="http://127.0.0.1:9",
                   POSTTRAIN_S3_ACCESS_KEY="k", POSTTRAIN_S3_SECRET_KEY="s")
    _one_line_exit_2(s3, "cannot reach the S3 artifact root", "127.0.0.1:9", "POSTTRAIN_S3_ENDPOINT_URL")

    helptext = " ".join(posttrain(["run", "--help"], state, timeout=300).stdout.split())
    assert all(name in helptext for name in STAGES), helptext

    debug = posttrain([*SMOKE, "--stages", "curat", "--debug"], state)
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "UserError" in debug.stderr
    assert _snapshot(state) == before  # no flow run, no MLflow run, no payload was created

    artifacts = tmp_path / "ro-artifacts"
    artifacts.mkdir()
    _read_only(artifacts, True)
    try:
        _one_line_exit_2(posttrain(SMOKE, state, POSTTRAIN_ARTIFACT_ROOT=str(artifacts)), "artifact root", "not writable")
    finally:
        _read_only(artifacts, False)
    _read_only(state, True)
    try:
        ro = posttrain(SMOKE, state)
        line = _one_line_exit_2(ro, "state folder", "not writable", "POSTTRAIN_STATE_DIR")
        assert str(state) not in line.split("traceback:")[1]  # the log went to the temp folder
        after = _snapshot(state)
    finally:
        _read_only(state, False)
    assert after == before
    shutil.rmtree(state)
