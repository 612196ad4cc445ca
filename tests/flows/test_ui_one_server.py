"""The two-shell workflow on non-default ports: `posttrain ui --prefect-port P --mlflow-port M`
in one shell, `posttrain serve-flows` started in the background of another (SIGINT ignored, as
`cmd &` does), a run triggered through the Prefect API as the UI's form sends it from a third
process. The run completes on the UI's server, no second Prefect server starts on the database,
the run's MLflow link points at port M, bad form input is refused naming the field, and Ctrl-C
(SIGINT) stops serve-flows."""

from __future__ import annotations

import signal

import pytest
from ui_procs import active_runs, api, deployment, prefect_servers, start_serve_flows, stop, wait_for


def _artifact_link(base: str, flow_run_id: str, key: str) -> str:
    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}, "key": {"any_": [key]}}}
    (art,) = api(base, "POST", "/artifacts/filter", body).json()
    return art["data"]


def _refused(base: str, dep_id: str, params: dict) -> str:
    r = api(base, "POST", f"/deployments/{dep_id}/create_flow_run", {"parameters": params})
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "\n" not in detail
    return detail


@pytest.mark.slow
def test_ui_on_other_ports_runs_a_form_run_on_its_own_server(posttrain_ui, tmp_path):
    ui, base = posttrain_ui, posttrain_ui["api"]
    state = ui["state"]
    # `posttrain ui` printed the environment for other shells and recorded its URLs.
    assert f"  export PREFECT_API_URL={base}" in ui["lines"], ui["lines"]
    assert f"  export POSTTRAIN_MLFLOW_UI_URL={ui['mlflow']}" in ui["lines"]
    assert (state / "ui.json").exists()

    log = tmp_path / "serve-flows.log"
    serve = start_serve_flows(state, log, "--recipe", "smoke")
    try:
        # The deployment may exist already (another test served the same UI): wait for this
        # process to say which server it uses, then for its registration.
        note = f"Prefect server: {base} (posttrain ui, pid {ui['proc'].pid}"
        wait_for("serve-flows names the UI's server", lambda: note in log.read_text(errors="replace"), 240)
        dep = wait_for("post-training registered", lambda: deployment(base, "post-training"), 240)
        # The form starts from the named recipe: `config` is the smoke recipe, field by field.
        from components.recipe import load_recipe

        smoke = load_recipe("smoke").model_dump(mode="json")
        assert dep["parameters"] == {"recipe": "smoke", "config": smoke}
        props = dep["parameter_openapi_schema"]["properties"]
        assert {"smoke", "default"} <= set(props["recipe"]["enum"])

        # Typos are refused before a run exists, in one line naming the field.
        assert "stages" in _refused(base, dep["id"], {"stages": ["curat"]})
        assert "recipe" in _refused(base, dep["id"], {"recipe": "smok"})
        assert "overrides" in _refused(base, dep["id"], {"overrides": ["rl_train.steps"]})

        created = api(base, "POST", f"/deployments/{dep['id']}/create_flow_run",
                      {"parameters": {**dep["parameters"], "stages": ["curate"]}})
        assert created.status_code == 201, created.text
        run = created.json()
        done = wait_for("the run to finish", lambda: (lambda fr: fr if fr["state"]["type"] in (
            "COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None)(
            api(base, "GET", f"/flow_runs/{run['id']}").json()), 600, every_s=2,
            explain=lambda: f"runs not final:\n{active_runs(base)}\nserve-flows log:\n{log.read_text()[-3000:]}")
        assert done["state"]["type"] == "COMPLETED", (done["state"], log.read_text()[-3000:])
        assert len(prefect_servers(state / "prefect")) == 1  # the UI's, not an ephemeral one beside it
        link = _artifact_link(base, run["id"], "mlflow-run")
        assert link.startswith(f"[MLflow run]({ui['mlflow']}/#/experiments/"), link  # a Markdown link
    finally:
        code = stop(serve, signal.SIGINT, timeout_s=90)
    assert code == 0, log.read_text()[-3000:]
