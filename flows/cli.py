"""``posttrain`` command line: run the pipeline, move registry aliases, serve models."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, help="posttrain: post-training pipeline (Prefect + MLflow)")


def _env():
    from components.settings import configure_process_env

    return configure_process_env()


@app.command()
def run(
    recipe: str = typer.Option("default", help="built-in recipe name or a YAML path"),
    set_: list[str] = typer.Option([], "--set", help="override a recipe field: key=value"),
    stages: Optional[str] = typer.Option(None, help="comma-separated stages to run up to"),
    summary: Optional[Path] = typer.Option(None, help="write a JSON run summary here"),
) -> None:
    """Run the post-training flow on a recipe."""
    _env()
    from components.recipe import RecipeError, load_recipe

    try:
        load_recipe(recipe, set_)  # fail on a bad recipe before any work starts
    except RecipeError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2)
    from flows.post_training import post_training

    stage_list = [s.strip() for s in stages.split(",")] if stages else None
    result = post_training(recipe=recipe, overrides=set_, stages=stage_list)
    if summary:
        summary.write_text(json.dumps(result, indent=2, default=str))
    for name, s in result["stages"].items():
        typer.echo(f"{name:28s} {'cached' if s['cached'] else 'computed':8s} {s['seconds']:8.1f}s")
    dep = result["stages"].get("deploy", {}).get("deployment")
    if dep:
        typer.echo(f"registered {dep['model_name']} v{dep['version']} ({dep['registered']}); {dep.get('decision', '')}")
        _echo_serving(dep)
    typer.echo(f"MLflow run {result['mlflow_run_id']}  Prefect flow run {result['flow_run_id']}")


def _echo_serving(dep: dict) -> None:
    """The live server for the registered model and a request to paste. Asks the deployments
    state, not the record: a cached deploy stage starts no server, one from an earlier run may
    still answer, or may be gone."""
    from components.serving.bluegreen import BlueGreenDeployer
    from components.settings import get_settings
    from components.stages.deploy import curl_example

    live = BlueGreenDeployer(get_settings().state_path / "deployments.json").current(dep["model_name"])
    if live is not None:
        typer.echo(f"serving {live.served_model_name} v{live.model_version} at {live.endpoint} (pid {live.pid})")
        if str(live.model_version) == str(dep["version"]) and dep.get("serving_fallback"):
            typer.echo(f"  {dep['serving_fallback']}")
        typer.echo(curl_example(live.endpoint, live.served_model_name))
    elif dep.get("endpoint"):
        typer.echo(f"the server recorded at {dep['endpoint']} is not running; "
                   f"`posttrain serve --model {dep['model_name']}` starts the champion")


@app.command()
def promote(version: str, model: str = typer.Option("posttrain-policy", help="registered model name")) -> None:
    """Make VERSION the champion (the old champion becomes 'previous')."""
    from components.stages.deploy import promote as do_promote
    from components.tracking import Tracker

    typer.echo(json.dumps(do_promote(Tracker(_env()), model, version)))


@app.command()
def rollback(model: str = typer.Option("posttrain-policy", help="registered model name")) -> None:
    """Swap 'champion' back to 'previous'."""
    from components.stages.deploy import rollback as do_rollback
    from components.tracking import Tracker

    try:
        typer.echo(json.dumps(do_rollback(Tracker(_env()), model)))
    except ValueError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1)


@app.command()
def serve(
    alias: str = typer.Option("champion", help="registry alias to serve"),
    model: str = typer.Option("posttrain-policy", help="registered model name"),
    port: int = typer.Option(8100, help="first of the two blue/green ports (127.0.0.1)"),
) -> None:
    """Serve a registry model with vLLM (blue/green: the old server stops only after the new one answers)."""
    from components.artifacts import ArtifactRef
    from components.recipe import DeployConfig
    from components.stages.deploy import serve as do_serve
    from components.tracking import Tracker
    from tasks.common import store

    settings = _env()
    mv = Tracker(settings).version_by_alias(model, alias)
    if mv is None:
        typer.echo(f"model {model} has no version with alias {alias!r}", err=True)
        raise typer.Exit(1)
    path = store().local_path(ArtifactRef(uri=mv.source, sha256=mv.tags.get("source_sha256", ""), kind="model"))
    info = do_serve(DeployConfig(registered_model_name=model, port=port), settings.state_path, path, str(mv.version), model)
    typer.echo(json.dumps(info, indent=2))


@app.command()
def deployments() -> None:
    """List the vLLM servers started by posttrain and whether they are alive."""
    from components.serving.bluegreen import BlueGreenDeployer

    settings = _env()
    for d in BlueGreenDeployer(settings.state_path / "deployments.json").list():
        typer.echo(f"{d.name:20s} v{d.model_version:5s} {d.endpoint:32s} pid {d.pid} ({d.color})")


@app.command()
def ui(
    prefect_port: int = typer.Option(4200), mlflow_port: int = typer.Option(5000),
) -> None:
    """Start the Prefect and MLflow UIs on 127.0.0.1 (state-folder databases); Ctrl-C stops both."""
    import time

    from components.ui import start_uis, stop_uis

    import signal

    # A shell starting us in the background (no job control) leaves SIGINT ignored, and Python
    # then never raises KeyboardInterrupt: take Ctrl-C (and SIGTERM) back explicitly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    settings = _env()
    procs = start_uis(settings, prefect_port=prefect_port, mlflow_port=mlflow_port)
    typer.echo(f"Prefect UI: http://127.0.0.1:{prefect_port}\nMLflow UI:  http://127.0.0.1:{mlflow_port}\nCtrl-C stops both.")
    try:
        while all(p.poll() is None for p in procs.values()):
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        stop_uis(procs)


_CRON_HELP = "cron of recurring-retrain (env POSTTRAIN_RETRAIN_CRON)"


@app.command("work-pool")
def work_pool(
    name: str = typer.Option("posttrain-gpu", help="process work pool to create or update"),
    gpu_slots: int = typer.Option(1, help="slots of the 'gpu' task tag concurrency limit"),
) -> None:
    """Create the process work pool, its one-run-at-a-time 'pipeline' queue and the 'gpu' limit."""
    _env()
    from flows.deployments import ensure_work_pool

    typer.echo(json.dumps(ensure_work_pool(name, gpu_slots=gpu_slots)))


@app.command("deploy-flows")
def deploy_flows(
    pool: str = typer.Option("posttrain-gpu", help="process work pool (created if missing)"),
    recipe: str = typer.Option("default", help="default recipe of the deployments"),
    cron: str = typer.Option("0 3 * * 0", envvar="POSTTRAIN_RETRAIN_CRON", help=_CRON_HELP),
    timezone: str = typer.Option("UTC", help="time zone of the cron"),
) -> None:
    """Register the deployments on a work pool; run them with `prefect worker start --pool POOL`."""
    _env()
    from flows.deployments import deploy_flows as do_deploy
    from flows.deployments import deployment_specs

    for name, dep_id in do_deploy(deployment_specs(recipe, cron, timezone), pool).items():
        typer.echo(f"{name:28s} {dep_id}")


@app.command("serve-flows")
def serve_flows(
    recipe: str = typer.Option("default", help="default recipe of the deployments"),
    cron: str = typer.Option("0 3 * * 0", envvar="POSTTRAIN_RETRAIN_CRON", help=_CRON_HELP),
    timezone: str = typer.Option("UTC", help="time zone of the cron"),
) -> None:
    """Register the deployments and run their flow runs in this process (one at a time) until Ctrl-C."""
    _env()
    from flows.deployments import deployment_specs
    from flows.deployments import serve_flows as do_serve

    do_serve(deployment_specs(recipe, cron, timezone))


@app.command()
def recipes() -> None:
    """List the built-in recipes."""
    from components.recipe import builtin_recipes

    for r in builtin_recipes():
        typer.echo(r)


def main() -> None:
    from components.settings import apply_thread_policy

    apply_thread_policy()  # before any command imports torch
    app(prog_name="posttrain")


if __name__ == "__main__":
    sys.exit(main())
