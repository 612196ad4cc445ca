"""Machine/environment settings (never part of a recipe, never stored in flow parameters).

Loaded where a task runs from ``POSTTRAIN_*`` variables and an optional ``.env`` file,
so secrets such as S3 keys stay out of MLflow params, Prefect parameters and logs.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POSTTRAIN_", env_file=".env", extra="ignore")

    state_dir: Path = Field(Path(".posttrain"), description="holds artifacts, Prefect home, MLflow db")
    artifact_root: str | None = Field(None, description="local folder or s3://bucket/prefix")
    mlflow_tracking_uri: str | None = Field(None, description="default: sqlite db in state_dir")
    device: str = Field("auto", description="auto | cpu | cuda")
    s3_endpoint_url: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    prefect_api_url: str | None = Field(
        None, description="use this Prefect server when it answers (else the one of `posttrain ui`, else ephemeral)")
    mlflow_ui_url: str | None = Field(
        None, description="MLflow UI base URL for links in Prefect (default: the one of `posttrain ui`, else :5000)")
    recipes_dir: Path = Field(Path("recipes"), description="YAML recipes offered by name in the Prefect UI form")
    cache_version: str = Field("1", description="bump to invalidate every cached stage")
    cache_dir: Path = Field(default_factory=lambda: Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "posttrain",
                            description="machine-wide cache shared by state folders (empty migrated databases)")
    judge_base_url: str | None = Field(
        None, description="OpenAI-compatible base URL of the `judge` reward's model, e.g. http://127.0.0.1:8000/v1")
    judge_api_key: SecretStr | None = Field(None, description="bearer token for the judge server (never logged)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (torch.set_num_threads); "
                                "None = torch's default (the physical cores)")
    executor: Literal["local", "ray"] = Field(
        "local", description="local: fan-out tasks run in threads of this process; ray: on the Ray cluster at "
        "ray_address (prefect-ray's RayTaskRunner)")
    ray_address: str | None = Field(None, description="the Ray cluster (GCS address host:port, as `ray start --head` "
                                    "prints) for executor=ray")
    onednn_linear: bool = Field(True, description="the transformers engine's float32 CPU linear layers run "
                                "through oneDNN (kernels/cpu_linear.py); false keeps MKL's F.linear")
    task_retries: int = Field(2, ge=0, description="retries of a fan-out task after an infrastructure error "
                              "(a Ray worker or node that died, OSError/ConnectionError); never after a user error")

    @property
    def state_path(self) -> Path:
        return self.state_dir.expanduser().resolve()

    @property
    def artifact_uri(self) -> str:
        return self.artifact_root or str(self.state_path / "artifacts")

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.state_path / 'mlflow.db'}"

    @property
    def remote_root(self) -> str | None:
        """The artifact root when it is remote (``s3://...``), else None: the switch for S3 mode."""
        root = self.artifact_uri
        return root.rstrip("/") if "://" in root and not root.startswith("file://") else None

    @property
    def mlflow_artifact_uri(self) -> str:
        """Where a new MLflow experiment keeps run artifacts: beside the stage payloads."""
        return f"{self.remote_root}/mlruns" if self.remote_root else str(self.state_path / "mlruns")

    @property
    def prefect_result_uri(self) -> str | None:
        """Prefect result storage (the cache records) for remote roots; None keeps the local default."""
        return f"{self.remote_root}/prefect-results" if self.remote_root else None

    @property
    def lock_dir(self) -> Path:
        """File locks that stop two runs on this machine computing the same stage twice."""
        return self.state_path / "locks"

    def storage_options(self, credentials: bool = True) -> dict:
        """fsspec options for s3:// URIs (keys are read here, never logged).

        ``credentials=False`` gives options that may be stored (a Prefect block document):
        there s3fs finds the keys in the process environment (``s3_env``).
        """
        opts: dict = {}
        if self.s3_endpoint_url:
            opts["client_kwargs"] = {"endpoint_url": self.s3_endpoint_url}
        if credentials and self.s3_access_key and self.s3_secret_key:
            opts["key"] = self.s3_access_key.get_secret_value()
            opts["secret"] = self.s3_secret_key.get_secret_value()
        return opts

    def s3_env(self) -> dict[str, str]:
        """Variables through which boto3 (MLflow) and s3fs (Prefect results) read endpoint and keys.

        Only what the settings name; with no keys set, the usual AWS chain (profile, role) applies.
        """
        env: dict[str, str] = {}
        if self.s3_endpoint_url:
            env["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint_url
        if self.s3_access_key and self.s3_secret_key:
            env["AWS_ACCESS_KEY_ID"] = self.s3_access_key.get_secret_value()
            env["AWS_SECRET_ACCESS_KEY"] = self.s3_secret_key.get_secret_value()
        return env

    def worker_env(self) -> dict[str, str]:
        """The settings a Ray worker needs to see this run's state folder, artifact store and MLflow,
        as ``POSTTRAIN_*`` variables (they go into Ray's runtime_env). Never a secret: S3 keys come
        from each node's own environment (the shell that ran ``ray start``)."""
        env = {
            "POSTTRAIN_STATE_DIR": str(self.state_path),
            "POSTTRAIN_ARTIFACT_ROOT": self.artifact_uri,
            "POSTTRAIN_MLFLOW_TRACKING_URI": self.tracking_uri,
            "POSTTRAIN_DEVICE": self.device,
            "POSTTRAIN_CACHE_VERSION": self.cache_version,
            "POSTTRAIN_CACHE_DIR": str(self.cache_dir.expanduser()),
            "POSTTRAIN_TASK_RETRIES": str(self.task_retries),
            "POSTTRAIN_EXECUTOR": "local",  # a worker never starts a task runner of its own
        }
        if self.s3_endpoint_url:
            env["POSTTRAIN_S3_ENDPOINT_URL"] = self.s3_endpoint_url
            env["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint_url
        if self.threads:
            env["POSTTRAIN_THREADS"] = str(self.threads)
        env["POSTTRAIN_ONEDNN_LINEAR"] = "1" if self.onednn_linear else "0"
        if self.mlflow_ui_url:
            env["POSTTRAIN_MLFLOW_UI_URL"] = self.mlflow_ui_url
        env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
        return env

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def answers(url: str, timeout_s: float = 0.5) -> bool:
    """Whether ``url`` (a loopback health endpoint) answers 200 within ``timeout_s``."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 (loopback)
            return r.status == 200
    except Exception:
        return False


def apply_thread_policy() -> None:
    """Make idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``) unless the
    environment chose otherwise. On a shared machine spinning threads of two processes made every
    op several times slower; the variable only counts when it is set before torch loads, so every
    entry point calls this first."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def apply_threads(settings: Settings) -> None:
    """``POSTTRAIN_THREADS``: the number of torch intra-op threads of this process."""
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)


class SettingsError(ValueError):
    """A ``POSTTRAIN_*`` variable or ``.env`` entry that does not validate, in one line naming it
    (never its value, which may be a key)."""


def load_settings() -> Settings:
    """``Settings()`` from the environment and ``.env``, a validation error as one ``SettingsError``."""
    try:
        return Settings()
    except ValidationError as e:
        causes = [f"POSTTRAIN_{'_'.join(str(x) for x in err['loc']).upper()}: {err['msg']}" for err in e.errors()]
        raise SettingsError("bad setting " + "; ".join(causes)) from None


def apply_kernel_settings(settings: Settings) -> None:
    """``POSTTRAIN_ONEDNN_LINEAR``, normalised into the environment, where ``kernels.cpu_linear``
    (which never imports settings) reads it; so a ``.env`` entry counts too."""
    os.environ["POSTTRAIN_ONEDNN_LINEAR"] = "1" if settings.onednn_linear else "0"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    s = load_settings()
    apply_thread_policy()
    apply_threads(s)
    apply_kernel_settings(s)
    return s


def reset_settings() -> None:
    get_settings.cache_clear()


def export_s3_env(settings: Settings | None = None) -> None:
    """Put the S3 endpoint and keys into this process's environment (not into any record).

    MLflow's S3 artifact repository and the Prefect result block read them from there, so the
    secret is never written to a block document, an MLflow param or a flow parameter.
    """
    s = settings or get_settings()
    if s.remote_root is None:
        return
    os.environ.update(s.s3_env())
    # boto3 needs a region to sign; S3-compatible servers accept any.
    if not (os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")):
        os.environ["AWS_DEFAULT_REGION"] = "us-east-1"


def configure_process_env(settings: Settings | None = None) -> Settings:
    """Point Prefect's home/result storage into the state folder before prefect is imported.

    A Prefect database migrated by a newer Prefect cannot be opened by an older one, so
    each project keeps its own PREFECT_HOME.
    """
    apply_thread_policy()
    s = settings or get_settings()
    home = s.state_path / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(home / "results"))
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's own machinery stays at WARNING; flow and task run loggers (stage start/end, cache
    # hit/miss, key figures) log at INFO to the API, so the Logs tab of a run shows them. The
    # console handler stays at WARNING: the terminal gets components.progress's lines instead.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    # Libraries' own bars (transformers' weight loading, compressed-tensors' export) left ~20
    # blank lines per run; components.progress draws the one bar a stage has.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    _use_prefect_server(s)
    # No hub at run time: fail fast with a clear error instead of hanging on retries.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    _safe_child_path()
    export_s3_env(s)
    return s


def _safe_child_path() -> None:
    """Child ``python -m`` processes (Prefect's ephemeral server runs ``python -m uvicorn``) must not
    import from the user's working directory: a file there named like a standard-library module
    (``inspect.py``) would shadow it. PYTHONSAFEPATH stops ``-m`` prepending the cwd to sys.path;
    the project's own folder goes on PYTHONPATH so children import the same code as this process."""
    os.environ.setdefault("PYTHONSAFEPATH", "1")
    root = str(Path(__file__).resolve().parents[1])
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([*parts, root])


# How this process reaches Prefect, for ``prefect_server_note`` (set by configure_process_env).
_PREFECT_SOURCE = {"how": "unset"}


def _wait_answers(url: str, pid: int, timeout_s: float) -> bool:
    from components.ui_record import pid_alive

    deadline = time.time() + timeout_s
    while time.time() < deadline and pid_alive(pid):
        if answers(url):
            return True
        time.sleep(1.0)
    return answers(url)


def _use_prefect_server(s: Settings) -> None:
    """Pick the Prefect server (and the MLflow UI for links) before prefect is imported.

    Order: ``PREFECT_API_URL`` already set (a worker or runner passes it to its flow runs);
    ``POSTTRAIN_PREFECT_API_URL`` when it answers; the server of a live ``posttrain ui`` for this
    state folder (``<state>/ui.json``); else Prefect's ephemeral mode. A live UI server that does
    not answer is an error, never a reason to start a second server on the same database.
    """
    from components.ui_record import pid_alive, read_record, record_path

    rec = read_record(s.state_path)
    if rec and s.mlflow_ui_url is None:
        os.environ.setdefault("POSTTRAIN_MLFLOW_UI_URL", rec["mlflow_ui_url"])
    os.environ.setdefault("POSTTRAIN_MLFLOW_UI_URL", s.mlflow_ui_url or "http://127.0.0.1:5000")
    if "PREFECT_API_URL" in os.environ:
        _PREFECT_SOURCE.update(how="PREFECT_API_URL", url=os.environ["PREFECT_API_URL"])
        return
    if s.prefect_api_url and answers(s.prefect_api_url.rstrip("/") + "/health"):
        os.environ["PREFECT_API_URL"] = s.prefect_api_url
        _PREFECT_SOURCE.update(how="POSTTRAIN_PREFECT_API_URL", url=s.prefect_api_url)
        return
    if rec:
        url = rec["prefect_api_url"]
        up = _wait_answers(url.rstrip("/") + "/health", rec["pid"], 240.0)
        if not up and not pid_alive(rec["pid"]):  # the UI stopped meanwhile
            rec = None
        elif not up:
            raise RuntimeError(f"the Prefect server of `posttrain ui` (pid {rec['pid']}, {record_path(s.state_path)}) "
                               f"does not answer at {url}; refusing to start a second server on the same database")
    if rec:
        os.environ["PREFECT_API_URL"] = rec["prefect_api_url"]
        _PREFECT_SOURCE.update(how="ui.json", url=rec["prefect_api_url"], pid=rec["pid"],
                               record=str(record_path(s.state_path)))
        return
    _PREFECT_SOURCE.update(how="ephemeral", url=None, home=os.environ.get("PREFECT_HOME", ""))


def prefect_server_note() -> str:
    """One line saying which Prefect server this process uses (call after configure_process_env)."""
    src = _PREFECT_SOURCE
    if src["how"] == "ui.json":
        return f"Prefect server: {src['url']} (posttrain ui, pid {src['pid']}, recorded in {src['record']})"
    if src["how"] == "ephemeral":
        return (f"Prefect server: ephemeral, started for this run on the database in {src['home']} "
                "(no `posttrain ui` is running for this state folder)")
    if src["how"] == "unset":
        return "Prefect server: not chosen yet"
    return f"Prefect server: {src['url']} (from {src['how']})"
