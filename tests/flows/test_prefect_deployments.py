"""Deployments against a real Prefect server: `posttrain deploy-flows` registers what
`deployments/prefect.yaml` describes; a run triggered through the REST API with a recipe form
(as the UI sends it) runs on a process worker with its parameters applied; the pipeline queue
hands out one run at a time; the retrain schedule is readable through the API."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CRON = "17 4 * * 2"  # not the default, to show that the schedule is configurable


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "POSTTRAIN_"))}
    return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def _prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())


@pytest.fixture
def restore_env():
    """Importing a flow module runs configure_process_env(), which sets PREFECT_* variables."""
    from components.settings import reset_settings

    old = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(old)
    reset_settings()


def test_prefect_yaml_matches_the_code_and_its_entrypoints_load(tmp_path, restore_env):
    os.environ.update({"POSTTRAIN_STATE_DIR": str(tmp_path), "POSTTRAIN_PREFECT_API_URL": "http://127.0.0.1:9/api"})
    from components.settings import reset_settings

    reset_settings()
    from prefect.flows import Flow, load_flow_from_entrypoint

    from flows.deployments import WORK_POOL, WORK_QUEUE, deployment_specs

    doc = _prefect_yaml()
    specs = {s.name: s for s in deployment_specs()}
    deps = {d["name"]: d for d in doc["deployments"]}
    assert list(deps) == list(specs)  # post-training, stage-<6 stages>, recurring-retrain
    assert len(deps) == 8
    flows = {}
    for name, d in deps.items():
        s = specs[name]
        assert (d["entrypoint"], d["parameters"], d["description"]) == (s.entrypoint, s.parameters, s.description)
        assert d["work_pool"] == {"name": WORK_POOL, "work_queue_name": WORK_QUEUE, "job_variables": {}}
        assert d["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
        assert d["tags"] == ["posttrain"]
        crons = [(x["cron"], x["timezone"]) for x in d["schedules"]]
        assert crons == ([(s.cron, s.timezone)] if s.cron else [])
        if d["entrypoint"] not in flows:
            flows[d["entrypoint"]] = load_flow_from_entrypoint(str(REPO / d["entrypoint"]))
        assert isinstance(flows[d["entrypoint"]], Flow)
    assert {f.name for f in flows.values()} == {"post-training", "recurring-retrain"}
    # The pull step goes to the directory the build step printed (`pwd` where `prefect deploy` ran).
    (build,) = doc["build"]
    step_id = build["prefect.deployments.steps.run_shell_script"]["id"]
    assert doc["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": f"{{{{ {step_id}.stdout }}}}"}}]


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    from components.serving.vllm_server import find_free_port

    home = tmp_path_factory.mktemp("prefect-home")
    port = find_free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=_clean_env(PREFECT_HOME=str(home), PREFECT_UI_API_URL=url),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            assert proc.poll() is None, (home / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            raise TimeoutError("Prefect server did not answer in 180 s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _post(api: str, path: str, body: dict | None = None) -> httpx.Response:
    """POST as Prefect's own client does: a 503 (the server's database busy on a loaded machine) is
    retried after a pause, up to 5 times."""
    for attempt in range(6):
        r = httpx.post(f"{api}{path}", json=body or {}, timeout=30)
        if r.status_code != 503 or attempt == 5:
            return r
        time.sleep(2.0 * (attempt + 1))
    return r


def _handed_out(api: str) -> list[str]:
    """The runs the pool gives a polling worker now (what `prefect worker` asks for)."""
    soon = (datetime.now(timezone.utc) + timedelta(seconds=10)).isoformat()
    runs = _post(api, "/work_pools/posttrain-gpu/get_scheduled_flow_runs", {"scheduled_before": soon}).json()
    return [r["flow_run"]["id"] for r in runs]


def _flow_run(api: str, fr_id: str) -> dict:
    return httpx.get(f"{api}/flow_runs/{fr_id}", timeout=30).json()


@pytest.mark.slow
def test_deployments_registered_triggered_and_run_on_a_worker(prefect_api, tmp_path):
    api = prefect_api
    state = tmp_path / "state"
    env = _clean_env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "prefect"), POSTTRAIN_STATE_DIR=str(state))
    subprocess.run([str(BIN / "posttrain"), "deploy-flows", "--cron", CRON], env=env, cwd=REPO, check=True,
                   timeout=300, stdout=subprocess.DEVNULL)

    # What the API holds is what prefect.yaml describes (the cron is the one given on the CLI).
    registered = {d["name"]: d for d in _post(api, "/deployments/filter").json()}
    from components.recipe import load_recipe

    for d in _prefect_yaml()["deployments"]:
        r = registered[d["name"]]
        params = dict(r["parameters"])
        # deploy-flows also pre-fills post-training's `config` form from the deployment's recipe.
        if d["name"] == "post-training":
            assert params.pop("config") == load_recipe(d["parameters"]["recipe"]).model_dump(mode="json")
        assert (r["entrypoint"], params, r["description"], r["tags"]) == (
            d["entrypoint"], d["parameters"], d["description"], d["tags"])
        assert (r["work_pool_name"], r["work_queue_name"]) == (d["work_pool"]["name"], d["work_pool"]["work_queue_name"])
        assert r["global_concurrency_limit"]["limit"] == 1
        assert r["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        assert r["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
        assert r["enforce_parameter_schema"] is True
    assert len(registered) == 8
    retrain = registered["recurring-retrain"]
    (sched,) = retrain["schedules"]
    assert (sched["schedule"]["cron"], sched["schedule"]["timezone"], sched["active"]) == (CRON, "UTC", True)
    assert all(not registered[n]["schedules"] for n in registered if n != "recurring-retrain")

    # The pool's queue takes one run at a time; GPU-bound tasks share the `gpu` tag limit.
    queues = {q["name"]: q for q in _post(api, "/work_pools/posttrain-gpu/queues/filter").json()}
    assert queues["pipeline"]["concurrency_limit"] == 1
    assert httpx.get(f"{api}/v2/concurrency_limits/tag:gpu", timeout=30).json()["limit"] == 1

    # The UI's form comes from the recipe model: field descriptions and defaults are in the schema.
    post = registered["post-training"]
    schema = post["parameter_openapi_schema"]
    group_size = schema["definitions"]["RLConfig"]["properties"]["group_size"]
    assert (group_size["default"], group_size["description"]) == (8, "samples per prompt (G)")
    assert schema["properties"]["config"]["description"].startswith("a whole recipe as a form")

    form = load_recipe("smoke").model_dump(mode="json")
    form["name"] = "ui-form"
    form["curate"]["sources"][0]["n"] = 40  # the smoke recipe generates 80
    bad = {**form, "rl_train": {**form["rl_train"], "steps": -1}}
    rejected = _post(api, f"/deployments/{post['id']}/create_flow_run", {"parameters": {"config": bad}})
    assert rejected.status_code == 409 and "steps" in rejected.text  # validated before anything runs

    run = _post(api, f"/deployments/{post['id']}/create_flow_run",
                {"parameters": {"config": form, "stages": ["curate"]}}).json()
    other = _post(api, f"/deployments/{retrain['id']}/create_flow_run",
                  {"parameters": {"recipe": "smoke", "stages": ["curate"]}}).json()
    assert "state" in run and "state" in other, (run, other)  # an error detail instead of a flow run
    assert run["state"]["type"] == other["state"]["type"] == "SCHEDULED"
    # Two runs waiting, one slot: the pool hands out the first only.
    assert _handed_out(api) == [run["id"]]

    worker = subprocess.run([str(BIN / "prefect"), "worker", "start", "--pool", "posttrain-gpu", "--type", "process",
                             "--run-once"], env=env, cwd=tmp_path, timeout=400, capture_output=True, text=True)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    done = _flow_run(api, run["id"])
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["parameters"]["config"]["name"] == "ui-form"
    assert _flow_run(api, other["id"])["state"]["type"] == "SCHEDULED"  # it waited; now it is next
    assert _handed_out(api) == [other["id"]]

    # The form's values reached the pipeline: MLflow has the run under the form's name, with
    # 40 generated rows in curate.
    from components.settings import Settings
    from components.tracking import Tracker

    trk = Tracker(Settings(state_dir=state))
    (parent,) = trk.client.search_runs([trk.experiment_id], f"tags.`prefect.flow_run_id` = '{run['id']}'")
    assert parent.info.run_name == f"ui-form-{done['name']}"
    assert '"n": 40' in parent.data.params["recipe.curate.sources"]
    (curate,) = [c for c in trk.child_runs(parent.info.run_id) if c.data.tags["mlflow.runName"] == "curate"]
    assert curate.data.metrics["rows_in"] == 40.0


def _register_champion(state: Path, source: Path, sha: str) -> None:
    from components.settings import Settings
    from components.tracking import Tracker

    trk = Tracker(Settings(state_dir=state))
    run_id = trk.start_run("deploy")
    version = trk.register_model("posttrain-smoke", str(source), run_id, {"model_sha256": sha})
    trk.set_alias("posttrain-smoke", "champion", version)


def test_retrain_starts_from_the_champions_dense_weights(tmp_path, restore_env, monkeypatch):
    state = tmp_path / "state"
    os.environ.update({"POSTTRAIN_STATE_DIR": str(state), "POSTTRAIN_PREFECT_API_URL": "http://127.0.0.1:9/api"})
    from components.settings import reset_settings

    reset_settings()
    import flows.retrain as retrain

    assert retrain.champion_model_dir("posttrain-smoke") is None  # no registry entry yet
    # A compressed champion: vLLM serves `compressed/`, the trainer loads the dense twin `model/`.
    variant = state / "artifacts" / "compress" / "k1"
    for sub in ("model", "compressed"):
        (variant / sub).mkdir(parents=True)
        (variant / sub / "config.json").write_text("{}")
    _register_champion(state, variant / "compressed", "ab" * 32)
    assert retrain.champion_model_dir("posttrain-smoke") == variant / "model"

    calls = []
    monkeypatch.setattr(retrain, "post_training", lambda **kw: calls.append(kw) or {})
    monkeypatch.setattr(retrain, "get_run_logger", lambda: logging.getLogger("retrain"))
    retrain.recurring_retrain.fn(recipe="smoke", overrides=["rl_train.steps=2"], stages=["curate"])
    retrain.recurring_retrain.fn(recipe="smoke", from_champion=False, refresh_data=False)
    assert calls == [
        {"recipe": "smoke", "stages": ["curate"],
         "overrides": ["rl_train.steps=2", f"model.source={variant / 'model'}", "curate.refresh=true"]},
        {"recipe": "smoke", "stages": None, "overrides": []},
    ]
