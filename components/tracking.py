"""The one module that talks to MLflow.

Uses ``MlflowClient`` with explicit run ids rather than the fluent active-run API, because
Prefect may run tasks in worker threads where a global "active run" would be wrong.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from components.settings import Settings, export_s3_env

EXPERIMENT = "posttrain"
_SECRET_MARKERS = ("secret", "token", "password", "access_key", "api_key")


def _empty_db(settings: Settings) -> Path:
    """An empty MLflow sqlite database with every migration applied, made once per MLflow version
    in the machine's cache folder (written aside, then renamed: readers never see half a file)."""
    import tempfile

    import mlflow
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    cache = settings.cache_dir.expanduser()
    path = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".db.tmp")
        os.close(fd)
        try:
            engine = sqlalchemy.create_engine(f"sqlite:///{tmp}")
            _initialize_tables(engine)
            engine.dispose()
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return path


def _seed_db(settings: Settings) -> None:
    """A state folder's first MLflow database is a copy of the migrated empty one: MLflow's own
    creation runs its ~60 migrations (about 3 s on 2 cores) in every fresh state folder. MLflow
    adds its Default experiment on first open, as on a database it created. Anything failing here
    leaves the creation to MLflow."""
    uri = settings.tracking_uri
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    if db.exists():
        return
    import shutil

    try:
        empty = _empty_db(settings)
        db.parent.mkdir(parents=True, exist_ok=True)
        tmp = db.with_name(db.name + ".seed")
        shutil.copyfile(empty, tmp)
        os.replace(tmp, db)
    except Exception:  # noqa: BLE001 - an unwritable cache folder only costs the migrations
        pass


def _client(settings: Settings):
    import mlflow
    from mlflow import MlflowClient

    _seed_db(settings)
    mlflow.set_tracking_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri)


@contextlib.contextmanager
def _db_init_lock(settings: Settings):
    """Serialise MLflow's first touch of a sqlite database across processes on this machine.

    Two runs started together on a fresh state folder would otherwise both create MLflow's
    tables ("table ... already exists"). flock is released by the OS if a process dies.
    """
    if not settings.tracking_uri.startswith("sqlite"):
        yield
        return
    settings.lock_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.lock_dir / "mlflow-db.flock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Tracker:
    """Thin wrapper: parent/child runs, params, metrics, artifacts, registry."""

    def __init__(self, settings: Settings):
        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # MLflow's S3 artifact repository (boto3) reads endpoint and keys from the environment.
        export_s3_env(settings)
        self.settings = settings
        with _db_init_lock(settings):
            self.client = _client(settings)
            self.experiment_id = self._experiment()

    def _experiment(self) -> str:
        exp = self.client.get_experiment_by_name(EXPERIMENT)
        if exp is not None:
            return exp.experiment_id
        try:  # s3://<bucket>/<prefix>/mlruns with an S3 artifact root, else <state>/mlruns
            return self.client.create_experiment(EXPERIMENT, artifact_location=self.settings.mlflow_artifact_uri)
        except Exception:  # created concurrently by another process
            return self.client.get_experiment_by_name(EXPERIMENT).experiment_id

    # runs ---------------------------------------------------------------
    def start_run(self, name: str, parent_id: str | None = None, tags: dict[str, str] | None = None) -> str:
        t = {"mlflow.runName": name, **(tags or {})}
        if parent_id:
            t["mlflow.parentRunId"] = parent_id
        return self.client.create_run(self.experiment_id, tags=t, run_name=name).info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = {k: v for k, v in flatten(params).items() if not is_secret(k)}
        batch = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(batch), 100):
            self.client.log_batch(run_id, params=batch[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), ts, step or 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        ]
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i : i + 500])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_table(self, run_id: str, rows: list[dict], name: str) -> None:
        if rows:
            import pandas as pd

            self.client.log_table(run_id, data=pd.DataFrame(rows), artifact_file=name)

    def log_dataset(self, run_id: str, parquet_dir: Path, name: str, digest: str, context: str) -> None:
        """``mlflow.log_input`` equivalent: records the dataset, its digest and schema."""
        import mlflow.data
        import pandas as pd
        from mlflow.entities import DatasetInput, InputTag

        files = sorted(Path(parquet_dir).glob("*.parquet"))
        df = pd.concat([pd.read_parquet(f) for f in files]) if files else pd.DataFrame()
        with warnings.catch_warnings():
            # MLflow registers its local artifact source for both the "" and "file" schemes, then
            # warns on every local path that the two (identical) classes both match.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways",
                                    category=UserWarning)
            ds = mlflow.data.from_pandas(df, source=str(parquet_dir), name=name, digest=digest[:32])
        self.client.log_inputs(
            run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])]
        )

    def run_url(self, run_id: str) -> str:
        ui = os.environ.get("POSTTRAIN_MLFLOW_UI_URL", "http://127.0.0.1:5000")
        return f"{ui}/#/experiments/{self.experiment_id}/runs/{run_id}"

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)

    def child_runs(self, parent_id: str) -> list:
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
        )

    def parent_runs(self) -> list:
        """Every flow's parent run (they carry the Prefect flow run id), newest first."""
        return self.client.search_runs([self.experiment_id], filter_string="tags.`prefect.flow_run_id` != ''",
                                       order_by=["attributes.start_time DESC"], max_results=5000)

    def read_text(self, run_id: str, name: str) -> str:
        import mlflow.artifacts

        return mlflow.artifacts.load_text(f"runs:/{run_id}/{name}")

    def metric_history(self, run_id: str, key: str) -> list[float]:
        return [m.value for m in sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.step)]

    def copy_metric(self, src_run: str, key: str, dst_run: str, new_key: str) -> int:
        """Log ``key``'s whole history (step by step) of one run into another under ``new_key``."""
        from mlflow.entities import Metric

        hist = self.client.get_metric_history(src_run, key)
        batch = [Metric(new_key, m.value, m.timestamp, m.step) for m in hist]
        for i in range(0, len(batch), 500):
            self.client.log_batch(dst_run, metrics=batch[i : i + 500])
        return len(batch)

    def _model_card(self, run_id: str, name: str, example_prompt: str) -> str:
        """An MLflow logged model holding the card of a version about to be registered: its
        signature (a chat prompt in, the completion out) and an input example, an output of
        ``run_id``. Only metadata is logged; the weights stay where ``weights_uri`` points."""
        import tempfile

        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model, ModelSignature
        from mlflow.types import ColSpec, Schema

        sig = ModelSignature(inputs=Schema([ColSpec("string", "prompt")]),
                             outputs=Schema([ColSpec("string", "completion")]))
        lm = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=run_id,
                                             model_type="transformers")
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "input_example.json").write_text(json.dumps({"columns": ["prompt"], "data": [[example_prompt]]}))
            card = Model(signature=sig, model_id=lm.model_id, run_id=run_id)
            card.saved_input_example_info = {"artifact_path": "input_example.json", "type": "dataframe",
                                             "pandas_orient": "split"}
            card.save(str(Path(d) / "MLmodel"))
            self.client.log_model_artifacts(lm.model_id, d)
        self.client.finalize_logged_model(lm.model_id, LoggedModelStatus.READY)
        self.client.log_outputs(run_id, [LoggedModelOutput(lm.model_id, 0)])
        return lm.model_id

    # registry -----------------------------------------------------------
    def register_model(self, name: str, weights_uri: str, run_id: str, tags: dict[str, Any],
                       identity: tuple[str, ...] = (), example_prompt: str = "") -> str:
        """Register the weights at ``weights_uri`` as a new version of ``name``, or return the
        existing version whose weights and ``identity`` tags equal these: registering twice (a
        rerun after a kill between registration and the stage's end) never makes a duplicate.

        The version's MLflow source is a logged model card (``models:/<id>``) so the version page
        shows the signature and input example (MLflow reads ``MLmodel`` from the version's source);
        the weights' location is the version's ``weights_uri`` tag (``weights_uri(mv)``)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name, description="posttrain policy models")
        except MlflowException:
            pass
        clean = {k: str(v) for k, v in tags.items() if not is_secret(k)}
        if identity:
            same = self._same_version(name, weights_uri, {k: clean.get(k, "") for k in identity})
            if same is not None:
                return same
        model_id = self._model_card(run_id, name, example_prompt)
        clean.update({"weights_uri": weights_uri, "logged_model_id": model_id})
        mv = self.client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id, tags=clean,
                                              model_id=model_id)
        self.client.set_logged_model_tags(
            model_id, {"mlflow.modelVersions": json.dumps([{"name": name, "version": str(mv.version)}])})
        return str(mv.version)

    def _same_version(self, name: str, weights: str, ident: dict[str, str]) -> str | None:
        for mv in self.client.search_model_versions(f"name = '{name}'"):
            if weights_uri(mv) == weights and all(mv.tags.get(k, "") == v for k, v in ident.items()):
                return str(mv.version)
        return None

    def find_version(self, name: str, version: str):
        """The model version, or None when the model or the version does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(name, str(version))
        except MlflowException:
            return None

    def version_numbers(self, name: str) -> list[str]:
        vs = self.client.search_model_versions(f"name = '{name}'")
        return [str(v) for v in sorted(int(mv.version) for mv in vs)]

    def latest_version(self):
        """The most recently created model version of any registered model, or None."""
        found = self.client.search_model_versions(order_by=["creation_timestamp DESC"], max_results=1)
        return found[0] if found else None

    def all_versions(self) -> list:
        return list(self.client.search_model_versions())

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def delete_alias(self, name: str, alias: str) -> None:
        self.client.delete_registered_model_alias(name, alias)

    def version_by_alias(self, name: str, alias: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def model_version(self, name: str, version: str):
        return self.client.get_model_version(name, version)


def weights_uri(mv) -> str:
    """Where a registered version's weights are: its ``weights_uri`` tag (the version's source
    is its model card), or the source itself for versions registered before the card existed."""
    return mv.tags.get("weights_uri") or mv.source


def is_secret(key: str) -> bool:
    k = key.lower()
    return any(m in k for m in _SECRET_MARKERS)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v, default=str)
        else:
            out[key] = v
    return out
