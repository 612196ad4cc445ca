"""What a user watching `posttrain run --recipe smoke` sees, read back from the real places:
the terminal (plain lines, not a TTY), the Prefect API (one progress artifact per stage on the
flow run, all at 100 %; INFO logs of stage start/end and cache misses; task run names with the
variant; the Markdown summary) and MLflow (the parent run's headline metrics, the reward curve,
the registered version linked to the parent run with a signature)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["prepare_model", "curate", "estimate_difficulty", "rl_train", "compress:rtn-w8",
          "compress:magnitude-2:4", "evaluate_passes:base", "evaluate_passes:rl", "evaluate_passes:rtn-w8",
          "evaluate_passes:magnitude-2:4", "evaluate", "deploy"]


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """One CLI run against a real Prefect server (the test harness's), output captured."""
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    tmp = tmp_path_factory.mktemp("watch")
    state = tmp / "state"
    with prefect_test_harness(server_startup_timeout=300):  # a bound: shared CI machines are slow
        api = str(get_current_settings().api.url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "POSTTRAIN_", "MLFLOW_"))}
        env.update({"POSTTRAIN_STATE_DIR": str(state), "PREFECT_API_URL": api, "OMP_WAIT_POLICY": "PASSIVE"})
        proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--recipe", "smoke", "--summary",
                               str(tmp / "s.json")], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        summary = json.loads((tmp / "s.json").read_text())
        yield {"stdout": proc.stdout, "summary": summary, "state": state, "api": api}


def _key(label: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"progress-{label}".lower()).strip("-")


def test_terminal_has_one_line_per_stage_start_and_end(watched):
    out = watched["stdout"]
    assert "\r" not in out and "\x1b" not in out  # not a TTY: no bars, no redraws
    lines = out.splitlines()
    assert "" not in lines[: lines.index(next(line for line in lines if "deploy" in line and "computed" in line))]
    for label in STAGES:
        started = [ln for ln in lines if re.search(rf"\d\d:\d\d:\d\d  {re.escape(label)} +started$", ln)]
        ended = [ln for ln in lines if re.search(rf"\d\d:\d\d:\d\d  {re.escape(label)} +computed +[\d.]+s", ln)]
        assert len(started) == 1 and len(ended) == 1, (label, out)
    rl_line = next(ln for ln in lines if re.search(r"rl_train +computed", ln))
    reward = watched["summary"]["stages"]["rl_train"]["metrics"]["reward_mean"]
    assert f"reward_mean={reward:.3g}" in rl_line  # key figures on the end line


def test_prefect_progress_logs_names_and_summary(watched):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter, LogFilter

    fr = watched["summary"]["flow_run_id"]
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id={"any_": [fr]}))
        progress = {a.key: a.data for a in arts if a.type == "progress"}
        assert progress == {_key(label): 100.0 for label in STAGES}  # one per stage, on the parent, all done
        md = next(a for a in arts if a.key == "run-summary").data
        assert "**" not in md and "vs base base" not in md and "| rl_train | no |" in md
        logs = client.read_logs(log_filter=LogFilter(flow_run_id={"any_": [fr]}))
        info = [lg.message for lg in logs if lg.level == 20]
        for label in STAGES:
            assert f"{label}: started" in info, info
            assert any(m.startswith(f"{label}: computed (cache miss) in ") for m in info), (label, info)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [fr]}))
        names = {t.name for t in tasks}
        assert {"compress[rtn-w8]", "compress[magnitude-2:4]", "evaluate", "deploy"} <= names, names


def test_mlflow_parent_run_first_screen(watched):
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{watched['state'] / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{watched['state'] / 'mlflow.db'}")
    s = watched["summary"]
    parent = client.get_run(s["mlflow_run_id"])
    rl_run = s["stages"]["rl_train"]["mlflow_run_id"]
    rewards = [m.value for m in sorted(client.get_metric_history(rl_run, "reward_mean"), key=lambda m: m.step)]
    parent_curve = [m.value for m in sorted(client.get_metric_history(parent.info.run_id, "reward/mean"),
                                            key=lambda m: m.step)]
    assert parent_curve == rewards and len(rewards) == 4  # the RL reward per step, on the parent run
    for alias in ("reward/mean", "reward/pass_rate", "train/entropy", "train/length"):
        assert client.get_metric_history(rl_run, alias), alias
    ev = s["stages"]["evaluate"]["metrics"]
    dep = s["stages"]["deploy"]["deployment"]
    chosen = dep["chosen"]
    m = parent.data.metrics
    assert m["heldout_pass1/base"] == pytest.approx(ev["base.greedy_pass1"], abs=1e-4)
    assert m["heldout_pass1/rl"] == pytest.approx(ev["rl.greedy_pass1"], abs=1e-4)
    assert m["heldout_pass1/chosen"] == pytest.approx(ev[f"{chosen}.greedy_pass1"], abs=1e-4)
    assert m["size_mb/chosen"] < m["size_mb/base"]  # the chosen smoke variant is compressed
    # The registered version belongs to the parent run ("Registered models" on its page) and
    # links to a logged model carrying a signature and an input example.
    versions = client.search_model_versions(f"run_id = '{parent.info.run_id}'")
    assert [(v.name, str(v.version)) for v in versions] == [(dep["model_name"], str(dep["version"]))]
    info = mlflow.models.get_model_info(f"models:/{versions[0].tags['logged_model_id']}")
    assert info.signature.inputs.input_names() == ["prompt"]
    assert info.saved_input_example_info["artifact_path"] == "input_example.json"
    # The version page reads MLmodel from the version's own download location: the card is there,
    # while the weights' location is the version's weights_uri tag (what serve/retrain load).
    card = mlflow.models.get_model_info(client.get_model_version_download_uri(dep["model_name"], str(dep["version"])))
    assert card.signature.inputs.input_names() == ["prompt"] and card.signature.outputs.input_names() == ["completion"]
    assert versions[0].tags["weights_uri"] == dep["source"]


def test_a_stage_that_reports_rarely_still_moves_every_few_seconds(watched, monkeypatch):
    """The heartbeat: between two of a stage's own reports (an RL step is ~30 s on 2 cores) its
    Prefect progress artifact is rewritten with the elapsed time at least every HEARTBEAT_S
    (default 5 s, under the 10 s promise), and ends at 100 %. Here with a 0.4 s beat and one
    report followed by 2.5 s of silence, read back from the real server while the flow runs."""
    import threading
    import time

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter

    from tasks.common import StageReport, reporting

    assert StageReport.HEARTBEAT_S <= 10
    monkeypatch.setattr(StageReport, "HEARTBEAT_S", 0.4)
    quiet_s = 2.5

    @flow(name="heartbeat-probe")
    def probe() -> None:
        with reporting("probe-stage") as (rep, _owner):
            rep.update("step 1/2", 0.5)
            time.sleep(quiet_s)
            rep.end(False, {})

    seen: list[tuple[float, str]] = []
    done = threading.Event()

    def poll() -> None:
        with get_client(sync_client=True) as client:
            while not done.is_set():
                for a in client.read_artifacts(artifact_filter=ArtifactFilter(key={"any_": ["progress-probe-stage"]})):
                    if not seen or seen[-1] != (a.data, a.description):
                        seen.append((a.data, a.description))
                time.sleep(0.1)

    t = threading.Thread(target=poll)
    t.start()
    try:
        probe()
    finally:
        done.set()
        t.join()
    beats = [d for _, d in seen if "elapsed" in d and d.startswith("probe-stage: step 1/2")]
    # 2.5 s of silence at a 0.4 s beat: the artifact moved without any report, more than once (whole
    # seconds, read by a poller on a possibly loaded machine: at least two distinct values).
    assert len(beats) >= 2, seen
    secs = [int(re.search(r"\((\d+)s elapsed\)", d).group(1)) for d in beats]
    assert secs == sorted(secs) and secs[-1] > secs[0], seen
    assert all(p == 50.0 for p, d in seen if d in beats)  # the beat never moves the fraction
    assert seen[-1][0] == 100.0 and "computed (cache miss)" in seen[-1][1]  # the end wins over the beat


def test_the_terminal_bar_redraws_on_the_heartbeat(monkeypatch):
    """On a TTY the running stage's bar is redrawn by the heartbeat with the elapsed time."""
    import io
    import time

    from components.progress import TerminalProgress
    from tasks import common

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    term = TerminalProgress(stream=out)
    monkeypatch.setattr(common, "terminal", lambda: term)
    monkeypatch.setattr(common.StageReport, "HEARTBEAT_S", 0.3)
    rep = common.StageReport("bar-stage", None).begin()
    rep.update("round 1/3", 1 / 3)
    time.sleep(1.2)
    rep.end(False, {})
    text = out.getvalue()
    redraws = re.findall(r"round 1/3 \((\d+)s\)", text)
    assert len(redraws) >= 2, text  # redrawn without any new report
    assert re.search(r"bar-stage +computed", text)
