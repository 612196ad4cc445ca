"""Promise: runs killed at any point do not stay RUNNING. ``posttrain doctor`` reports the flow,
subflow and task runs and MLflow runs that a process which no longer exists left RUNNING;
``posttrain doctor --repair`` (and the start of every run) marks them CRASHED / FAILED, and
removes its stale locks; a live run's RUNNING state is never touched."""

from __future__ import annotations

from user_cli import kill_group, mlflow_db, posttrain, prefect_db, query, start, wait_until

KILLED = ["run", "--recipe", "smoke", "--set", "rl_train.steps=8", "--set", "rl_train.segment_steps=1",
          "--stages", "rl_train"]
LIVE = ["run", "--recipe", "smoke", "--set", "rl_train.steps=2000", "--set", "rl_train.segment_steps=2000",
        "--stages", "rl_train"]


def _flow_runs(state) -> dict[str, tuple[str, str]]:
    """flow run id -> (flow name, state type)."""
    rows = query(prefect_db(state), "select fr.id, f.name, fr.state_type from flow_run fr join flow f on fr.flow_id = f.id")
    return {i: (name, st) for i, name, st in rows}


def _task_runs(state, flow_run_ids) -> list[str]:
    rows = query(prefect_db(state), "select flow_run_id, state_type from task_run")
    return [st for fr, st in rows if fr in flow_run_ids]


def _mlflow(state) -> dict[str, str]:
    return dict(query(mlflow_db(state), "select run_uuid, status from runs"))


def _in_rl(state, exclude=()) -> bool:
    return any(n == "rl-train" and st == "RUNNING" and i not in exclude for i, (n, st) in _flow_runs(state).items())


def test_killed_runs_are_marked_crashed_and_live_runs_are_not_touched(tmp_path):
    state = tmp_path / "state"
    killed = start(KILLED, state)
    segments = lambda: len(list((state / "artifacts" / "rl_train").glob("*/_ref.json")))  # noqa: E731
    assert wait_until(lambda: segments() >= 1, killed)
    assert killed.poll() is None, "the run ended before it could be killed"
    kill_group(killed)
    dead_flows, dead_mlflow = _flow_runs(state), _mlflow(state)
    assert {n for n, st in dead_flows.values() if st == "RUNNING"} == {"post-training", "rl-train"}
    assert "RUNNING" in _task_runs(state, dead_flows) and "RUNNING" in dead_mlflow.values()

    report = posttrain(["doctor"], state, timeout=600)
    assert report.returncode == 1, report.stdout + report.stderr
    for fr_id, (_name, st) in dead_flows.items():
        assert st != "RUNNING" or fr_id in report.stdout
    for run_id, st in dead_mlflow.items():
        assert st != "RUNNING" or run_id in report.stdout
    assert _flow_runs(state) == dead_flows and _mlflow(state) == dead_mlflow  # a report changes nothing

    live = start(LIVE, state)
    try:
        assert wait_until(lambda: _in_rl(state, exclude=dead_flows), live)
        live_flows = {i: v for i, v in _flow_runs(state).items() if i not in dead_flows}
        live_mlflow = {i: v for i, v in _mlflow(state).items() if i not in dead_mlflow}
        repaired = posttrain(["doctor", "--repair"], state, timeout=600)
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        now_flows, now_mlflow = _flow_runs(state), _mlflow(state)
        assert live.poll() is None, "the live run ended during the check"
        assert {i: now_flows[i] for i in live_flows} == live_flows
        assert {n for i, (n, st) in live_flows.items() if st == "RUNNING"} == {"post-training", "rl-train"}
        assert {i: now_mlflow[i] for i in live_mlflow} == live_mlflow
    finally:
        kill_group(live)
    for fr_id, (name, st) in dead_flows.items():
        assert now_flows[fr_id][1] == ("CRASHED" if st == "RUNNING" else st), (name, now_flows[fr_id])
    assert "RUNNING" not in _task_runs(state, dead_flows) and "CRASHED" in _task_runs(state, dead_flows)
    for run_id, st in dead_mlflow.items():
        assert now_mlflow[run_id] == ("FAILED" if st == "RUNNING" else st)
    assert not list((state / "locks").glob("*.lock")) or "stale lock" in repaired.stdout


def _children(pid: int, word: str) -> list[int]:
    """Processes whose parent is ``pid`` and whose command line holds ``word``."""
    from pathlib import Path

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and word in (stat.parent / "cmdline").read_bytes().decode(errors="replace"):
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def test_a_run_killed_alone_takes_its_ephemeral_prefect_server_with_it(tmp_path):
    """``kill -9`` of the ``posttrain run`` process alone (not its group): the Prefect server it
    started for the run stops too, instead of serving its state folder's database for ever."""
    import os
    import signal
    from pathlib import Path

    run = start(LIVE, tmp_path / "state")
    try:
        assert wait_until(lambda: bool(_children(run.pid, "prefect.server.api.server")), run, timeout=300)
        (server,) = _children(run.pid, "prefect.server.api.server")
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        assert wait_until(lambda: not Path(f"/proc/{server}").exists() or
                          Path(f"/proc/{server}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", timeout=30)
    finally:
        if run.poll() is None:
            kill_group(run)
        else:
            try:
                os.killpg(run.pid, signal.SIGKILL)  # whatever the run left in its group
            except ProcessLookupError:
                pass
