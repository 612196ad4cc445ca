"""``posttrain`` command line: run the pipeline, move registry aliases, serve models."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer

app = typer.Typer(add_completion=False, help="posttrain: post-training pipeline (Prefect + MLflow)")


def _env():
    from components.settings import configure_process_env

    return configure_process_env()


_STAGES_HELP = ("comma-separated stages to run up to (upstream stages run too, usually cached): "
                "curate, estimate_difficulty, rl_train, compress, evaluate, deploy")


def _fail(exc: BaseException, code: int, debug: bool) -> None:
    """One line on stderr naming the cause (and the fix), the traceback in a log file; exit ``code``."""
    import traceback

    from components.preflight import write_error_log
    from components.settings import get_settings

    log = write_error_log(get_settings().state_path, exc)
    if debug:
        traceback.print_exception(exc)
    text = " ".join(str(exc).split()) or type(exc).__name__
    prefix = "error" if code == 2 else f"run failed: {type(exc).__name__}"
    typer.echo(f"{prefix}: {text} (traceback: {log})", err=True)
    raise typer.Exit(code)


def _start_checks(recipe: str, set_: list[str], stages: Optional[str]):
    """Everything a user can get wrong, checked before the flow (and any Prefect run) starts."""
    from components.preflight import parse_stages, preflight
    from components.recipe import load_recipe
    from components.settings import get_settings

    stage_list = parse_stages(stages)
    rec = load_recipe(recipe, set_)
    preflight(rec, get_settings())
    return stage_list


def _version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    def v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    typer.echo(f"posttrain {v('posttrain')} (prefect {v('prefect')}, mlflow {v('mlflow')}, "
               f"torch {v('torch')}, transformers {v('transformers')}, sqlalchemy {v('sqlalchemy')})")
    raise typer.Exit()


# Commands that talk to a Prefect server: they say which one before they start (`run` says it
# itself, after its pre-flight checks, so a user's mistake is reported before anything else).
_USES_PREFECT = ("serve-flows", "deploy-flows", "work-pool")


@app.callback()
def _main(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="print the versions of posttrain and its main libraries, then exit"),
) -> None:
    if ctx.invoked_subcommand in _USES_PREFECT and "--help" not in sys.argv:
        from components.settings import prefect_server_note

        try:
            _env()
        except RuntimeError as e:
            typer.echo(str(e), err=True)
            raise typer.Exit(1)
        if ctx.invoked_subcommand == "serve-flows":
            _check_executor()
        typer.echo(prefect_server_note(), err=True)


def _check_executor() -> None:
    """serve-flows runs the flow runs in this machine's environment: with POSTTRAIN_EXECUTOR=ray, a
    missing or unreachable cluster is its start-up error (one line, exit 2), not every run's."""
    from components.preflight import UserError, check_executor
    from components.settings import get_settings

    try:
        check_executor(get_settings())
    except UserError as e:
        _fail(e, 2, False)


@app.command()
def run(
    recipe: str = typer.Option("default", help="built-in recipe name or a YAML path"),
    set_: list[str] = typer.Option([], "--set", help="override a recipe field: key=value"),
    stages: Optional[str] = typer.Option(None, help=_STAGES_HELP),
    summary: Optional[Path] = typer.Option(None, help="write a JSON run summary here"),
    debug: bool = typer.Option(False, "--debug", help="print the full traceback of an error"),
) -> None:
    """Run the post-training flow on a recipe."""
    from components.preflight import UserError
    from components.recipe import RecipeError

    try:
        stage_list = _start_checks(recipe, set_, stages)
    except (UserError, RecipeError) as e:
        _fail(e, 2, debug)
    settings = _env()
    from components.settings import prefect_server_note

    typer.echo(prefect_server_note(), err=True)
    try:
        from tasks.server import begin_prefect_api, ensure_prefect_api

        api = begin_prefect_api(settings.lock_dir)  # boots while the flow's modules import
        from flows.post_training import post_training  # its task runner follows POSTTRAIN_EXECUTOR

        ensure_prefect_api(settings.lock_dir, api)
        result = post_training(recipe=recipe, overrides=set_, stages=stage_list)
    except (UserError, RecipeError) as e:
        _fail(e, 2, debug)
    except Exception as e:  # noqa: BLE001 - one line and the log file, never 500 lines
        _fail(e, 1, debug)
    if summary:
        summary.write_text(json.dumps(result, indent=2, default=str))
    # Each stage already printed its start and end line (components/progress.py): no second table.
    if "bytes_written" in result:
        from components.gc import human

        typer.echo(f"wrote {human(result['bytes_written'])} of new payloads ({len(result['payloads'])} payloads in use)")
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


_MODEL_HELP = "registered model name (default: the model of the last run in this state folder)"


def _model_name(trk, model: Optional[str]) -> str:
    from components.stages.deploy import last_model_name

    return model or last_model_name(trk) or "posttrain-policy"


@app.command()
def promote(version: str, model: Optional[str] = typer.Option(None, help=_MODEL_HELP)) -> None:
    """Make VERSION the champion (the old champion becomes 'previous'); an unknown VERSION changes nothing."""
    from components.stages.deploy import RegistryError
    from components.stages.deploy import promote as do_promote
    from components.tracking import Tracker

    trk = Tracker(_env())
    try:
        typer.echo(json.dumps(do_promote(trk, _model_name(trk, model), version)))
    except RegistryError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)


@app.command()
def rollback(model: Optional[str] = typer.Option(None, help=_MODEL_HELP)) -> None:
    """Swap 'champion' back to 'previous'; with no distinct previous version, says so and changes nothing."""
    from components.stages.deploy import RegistryError
    from components.stages.deploy import rollback as do_rollback
    from components.tracking import Tracker

    trk = Tracker(_env())
    try:
        typer.echo(json.dumps(do_rollback(trk, _model_name(trk, model))))
    except RegistryError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)


@app.command()
def doctor(repair: bool = typer.Option(False, "--repair", help="mark what it finds crashed/failed and remove stale locks")) -> None:
    """Find runs left RUNNING by processes that no longer exist, and stale locks; --repair fixes them.

    Only this machine's dead processes are considered: a live run is never touched."""
    settings = _env()
    from tasks.server import begin_prefect_api, ensure_prefect_api

    api = begin_prefect_api(settings.lock_dir)
    from tasks.reconcile import reconcile

    ensure_prefect_api(settings.lock_dir, api)

    report = reconcile(repair=repair)
    for line in report.lines():
        typer.echo(line)
    if report.findings and not repair:
        typer.echo("run `posttrain doctor --repair` to fix these (every `posttrain run` also does at start)")
        raise typer.Exit(1)


@app.command()
def gc(
    yes: bool = typer.Option(False, "--yes", help="delete (default: only list what would go and its size)"),
    keep_last: int = typer.Option(1, help="also keep every payload of the last N runs"),
    older_than: float = typer.Option(1.0, help="only delete payloads not written for this many days"),
) -> None:
    """Delete stage payloads nothing needs (dry run by default): never a registered version's lineage,
    a live deployment, the last runs' outputs or anything newer than --older-than."""
    settings = _env()
    from components.gc import collect, human
    from components.tracking import Tracker

    plan = collect(Tracker(settings), settings, keep_last=keep_last, older_than_days=older_than)
    for item in plan.items:
        typer.echo(f"{'delete' if yes else 'would delete'} {human(item.bytes):>9s}  {item.path}  ({item.why})")
    if yes:
        plan.apply()
    verb = "freed" if yes else "would free"
    typer.echo(f"{verb} {human(plan.total)} in {len(plan.items)} item(s); kept {len(plan.kept)} payload(s)"
               + ("" if yes else "; run with --yes to delete"))


@app.command()
def serve(
    alias: str = typer.Option("champion", help="registry alias to serve"),
    model: Optional[str] = typer.Option(None, help=_MODEL_HELP),
    port: int = typer.Option(8100, help="first of the two blue/green ports (127.0.0.1)"),
) -> None:
    """Serve a registry model with vLLM (blue/green: the old server stops only after the new one answers)."""
    from components.champion import resolve_champion
    from components.serving.config import DeployConfig
    from components.stages.deploy import serve as do_serve
    from components.tracking import Tracker
    from tasks.common import store

    settings = _env()
    trk = Tracker(settings)
    model = _model_name(trk, model)
    champ = resolve_champion(trk, store(), model, alias)
    if champ is None:
        typer.echo(f"model {model} has no version with alias {alias!r} whose weights are reachable", err=True)
        raise typer.Exit(1)
    info = do_serve(DeployConfig(registered_model_name=model, port=port), settings.state_path, champ.serving_dir,
                    champ.version, model)
    typer.echo(json.dumps(info, indent=2))


k8s_app = typer.Typer(add_completion=False, help="Kubernetes: render the manifests to run posttrain on a cluster")
app.add_typer(k8s_app, name="k8s")


@k8s_app.command("render")
def k8s_render(
    out: Path = typer.Option(..., "--out", help="folder to write the manifests to (created)"),
    recipe: str = typer.Option("default", help="recipe whose registered model vLLM serves (its champion)"),
    image: str = typer.Option("ghcr.io/posttrain/posttrain:latest", help="posttrain image for flow runs and Ray pods"),
    namespace: str = typer.Option("posttrain", help="namespace of every object"),
    gpus: int = typer.Option(1, help="nvidia.com/gpu limit of a flow-run Job (work-pool variable gpu_count)"),
    ray_workers: int = typer.Option(2, help="replicas of the RayCluster's GPU worker group"),
    vllm_replicas: int = typer.Option(2, help="replicas of the vLLM Deployment"),
    model_uri: Optional[str] = typer.Option(None, help="weights vLLM serves (default: the recipe's champion)"),
    prefect_api_url: str = typer.Option("http://prefect-server.posttrain.svc:4200/api",
                                        help="the Prefect API the pods report to"),
    kubernetes_version: str = typer.Option("1.34.0", help="Kubernetes version the manifests are validated against"),
) -> None:
    """Write a Prefect Kubernetes work-pool template (GPU stages), a KubeRay RayCluster, the vLLM
    Deployment + Service and the Secret the pods read, each validated with kubernetes-validate.
    Secret values are never written: pods read them from the Secret."""
    from components.k8s import K8sConfig, ManifestError
    from components.recipe import RecipeError, load_recipe
    from components.tracking import Tracker, weights_uri
    from tasks.k8s import render

    settings = _env()
    try:
        rec = load_recipe(recipe, [])
    except RecipeError as e:
        _fail(e, 2, False)
    name = rec.deploy.registered_model_name
    model = None
    if model_uri:
        model = (name, "external", model_uri)
    else:
        mv = Tracker(settings).version_by_alias(name, "champion")
        if mv is not None:
            model = (name, str(mv.version), weights_uri(mv))
    cfg = K8sConfig(image=image, namespace=namespace, gpus_per_job=gpus, ray_workers=ray_workers,
                    vllm_replicas=vllm_replicas, prefect_api_url=prefect_api_url)
    try:
        files = render(out, settings, cfg, rec.name, model, kubernetes_version)
    except (ManifestError, OSError) as e:  # an invalid document, an unwritable --out
        _fail(e, 2, False)
    for f in files:
        typer.echo(f"wrote {f}")
    if model is None:
        typer.echo(f"no champion of {name} in the registry: vllm.yaml not written (pass --model-uri)")
    typer.echo(f"valid for Kubernetes {kubernetes_version}. Next: kubectl create namespace {namespace}; fill in "
               f"and apply {out / 'secret.yaml'}; prefect work-pool create posttrain-gpu --type kubernetes "
               f"--base-job-template {out / 'prefect-work-pool-gpu.json'}; kubectl apply -f {out / 'raycluster.yaml'}")


@app.command()
def deployments() -> None:
    """List the vLLM servers started by posttrain and whether they are alive."""
    from components.serving.bluegreen import BlueGreenDeployer

    settings = _env()
    for d in BlueGreenDeployer(settings.state_path / "deployments.json").list():
        typer.echo(f"{d.name:20s} v{d.model_version:5s} {d.endpoint:32s} pid {d.pid} ({d.color})")


def _take_back_signals() -> None:
    """A shell starting us in the background (no job control) leaves SIGINT ignored, and Python
    then never raises KeyboardInterrupt: take Ctrl-C (and SIGTERM) back explicitly."""
    import signal

    def _interrupt(signum, frame):  # SIGTERM: the same unwinding as Ctrl-C
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # asyncio.run (prefect serve) handles it
    signal.signal(signal.SIGTERM, _interrupt)


@app.command()
def ui(
    prefect_port: int = typer.Option(4200, help="port of the Prefect server and UI (127.0.0.1)"),
    mlflow_port: int = typer.Option(5000, help="port of the MLflow tracking server and UI (127.0.0.1)"),
) -> None:
    """Start the Prefect and MLflow UIs on 127.0.0.1 (state-folder databases); Ctrl-C stops both.

    Their URLs go to <state>/ui.json, where `run`, `serve-flows` and flow runs find them.
    """
    import time

    from components.ui import start_uis, stop_uis
    from components.ui_record import env_lines, read_record

    _take_back_signals()
    settings = _env()
    try:
        procs = start_uis(settings, prefect_port=prefect_port, mlflow_port=mlflow_port)
    except RuntimeError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1)
    rec = read_record(settings.state_path) or {}
    typer.echo(f"Prefect UI: http://127.0.0.1:{prefect_port}\nMLflow UI:  http://127.0.0.1:{mlflow_port}")
    typer.echo(f"Recorded in {settings.state_path / 'ui.json'}; in another shell (prefect worker, prefect CLI):")
    for line in env_lines(rec, settings.state_path):
        typer.echo(f"  {line}")
    typer.echo("Ctrl-C stops both.")
    try:
        while all(p.poll() is None for p in procs.values()):
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        stop_uis(procs, state=settings.state_path)


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
    """Register the deployments and run their flow runs here, one at a time, until Ctrl-C or SIGTERM.

    Uses the Prefect server of a live `posttrain ui` for the state folder (see <state>/ui.json).
    """
    _take_back_signals()
    _env()
    from flows.deployments import deployment_specs
    from flows.deployments import serve_flows as do_serve

    try:
        do_serve(deployment_specs(recipe, cron, timezone))
    except KeyboardInterrupt:
        typer.echo("serve-flows stopped", err=True)


@app.command()
def recipes() -> None:
    """List the built-in recipes."""
    from components.recipe import builtin_recipes

    for r in builtin_recipes():
        typer.echo(r)


def _exit(code: object) -> NoReturn:
    """Exit as the interpreter does (wait for threads: Prefect drains its log and event workers
    there; run exit handlers; flush), without its last step: a run leaves millions of objects
    (torch, transformers, Prefect, MLflow) and the full garbage collections of the interpreter's
    teardown took about 6 s on 2 cores after every command. Payload files are closed by then."""
    import atexit
    import os
    import threading

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe must not change the exit status
            pass
    os._exit(status)


def main() -> None:
    from components.settings import SettingsError, apply_thread_policy, load_settings

    apply_thread_policy()  # before any command imports torch
    try:
        load_settings()  # a bad POSTTRAIN_* variable: one line before any command starts (not cached)
    except SettingsError as e:
        typer.echo(f"error: {e}", err=True)
        _exit(2)
    try:
        app(prog_name="posttrain")
    except SystemExit as e:
        _exit(e.code)
    _exit(0)


if __name__ == "__main__":
    sys.exit(main())
