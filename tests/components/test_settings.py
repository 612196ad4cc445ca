"""Settings: where things go with a local or an s3:// artifact root, and where the keys may appear."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from components.settings import Settings, export_s3_env

S3 = dict(artifact_root="s3://bucket/team/", s3_endpoint_url="http://127.0.0.1:8333",
          s3_access_key="AKIDEXAMPLE", s3_secret_key="very-secret-value")


@pytest.fixture
def clean_env(monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_local_root_keeps_everything_in_the_state_folder(tmp_path: Path) -> None:
    s = Settings(_env_file=None, state_dir=tmp_path)
    assert s.remote_root is None
    assert s.artifact_uri == str(tmp_path / "artifacts")
    assert s.mlflow_artifact_uri == str(tmp_path / "mlruns")
    assert s.prefect_result_uri is None
    assert s.lock_dir == tmp_path / "locks"
    assert Settings(_env_file=None, state_dir=tmp_path, artifact_root="file:///data/a").remote_root is None


def test_s3_root_puts_mlflow_artifacts_and_prefect_results_in_the_bucket(tmp_path: Path) -> None:
    s = Settings(_env_file=None, state_dir=tmp_path, **S3)
    assert s.remote_root == "s3://bucket/team"  # trailing slash dropped
    assert s.mlflow_artifact_uri == "s3://bucket/team/mlruns"
    assert s.prefect_result_uri == "s3://bucket/team/prefect-results"
    assert s.lock_dir == tmp_path / "locks"  # locks stay on the machine


def test_storable_options_have_no_keys(tmp_path: Path) -> None:
    s = Settings(_env_file=None, state_dir=tmp_path, **S3)
    assert s.storage_options() == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:8333"},
                                   "key": "AKIDEXAMPLE", "secret": "very-secret-value"}
    assert s.storage_options(credentials=False) == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:8333"}}
    assert "very-secret-value" not in repr(s) + s.model_dump_json()


def test_export_s3_env_sets_what_boto3_and_s3fs_read(tmp_path: Path, clean_env) -> None:
    export_s3_env(Settings(_env_file=None, state_dir=tmp_path, **S3))
    assert os.environ["AWS_ACCESS_KEY_ID"] == "AKIDEXAMPLE"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "very-secret-value"
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:8333"
    assert os.environ["AWS_DEFAULT_REGION"] == "us-east-1"


def test_export_s3_env_leaves_a_local_setup_and_an_existing_region_alone(tmp_path: Path, clean_env) -> None:
    local = {k: v for k, v in S3.items() if k != "artifact_root"}
    export_s3_env(Settings(_env_file=None, state_dir=tmp_path, **local))  # keys set, but the root is local
    assert "AWS_SECRET_ACCESS_KEY" not in os.environ
    clean_env.setenv("AWS_REGION", "eu-west-3")
    export_s3_env(Settings(_env_file=None, state_dir=tmp_path, artifact_root="s3://b/p"))  # no keys: AWS chain
    assert "AWS_ACCESS_KEY_ID" not in os.environ and "MLFLOW_S3_ENDPOINT_URL" not in os.environ
    assert "AWS_DEFAULT_REGION" not in os.environ


def _python(code: str, **env: str) -> str:
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "POSTTRAIN_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                         timeout=300, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_posttrain_cli_sets_passive_omp_wait_before_torch_loads() -> None:
    # main() ends the process itself (flows.cli._exit): the value is printed by an exit handler.
    code = ("import atexit, sys, os; sys.argv = ['posttrain', '--help']\n"
            "from flows.cli import main\n"
            "assert 'torch' not in sys.modules\n"
            "atexit.register(lambda: print(os.environ.get('OMP_WAIT_POLICY')))\n"
            "main()")
    assert _python(code) == "PASSIVE"
    assert _python(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"  # an explicit choice is kept


def test_posttrain_threads_sets_torch_threads_where_settings_load() -> None:
    code = ("from components.settings import get_settings\n"
            "get_settings()\n"
            "import torch, os; print(torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])")
    assert _python(code, POSTTRAIN_THREADS="1") == "1 PASSIVE"
    with pytest.raises(ValidationError, match="threads"):
        Settings(threads=0)


def test_worker_env_carries_where_things_are_but_never_a_key(tmp_path: Path) -> None:
    """What a Ray worker is given (runtime_env): the state folder, artifact store, MLflow URI and
    endpoint, so it reads and writes the same places; the S3 keys stay with each node's environment."""
    s = Settings(_env_file=None, state_dir=tmp_path, executor="ray", ray_address="127.0.0.1:6379", **S3)
    env = s.worker_env()
    assert env["POSTTRAIN_STATE_DIR"] == str(tmp_path) and env["POSTTRAIN_ARTIFACT_ROOT"] == s.artifact_uri
    assert env["POSTTRAIN_MLFLOW_TRACKING_URI"] == s.tracking_uri
    assert env["POSTTRAIN_S3_ENDPOINT_URL"] == S3["s3_endpoint_url"]
    assert env["POSTTRAIN_EXECUTOR"] == "local"
    text = repr(env)
    assert S3["s3_access_key"] not in text and S3["s3_secret_key"] not in text


def test_executor_accepts_local_and_ray_only(tmp_path: Path) -> None:
    assert Settings(_env_file=None, state_dir=tmp_path).executor == "local"
    assert Settings(_env_file=None, state_dir=tmp_path).task_retries == 2
    with pytest.raises(ValidationError, match="local"):
        Settings(_env_file=None, state_dir=tmp_path, executor="dask")


@pytest.mark.parametrize("name, value", [("POSTTRAIN_THREADS", "0"), ("POSTTRAIN_ONEDNN_LINEAR", "banana"),
                                         ("POSTTRAIN_S3_SECRET_KEY", "")])
def test_a_bad_setting_is_one_line_before_any_command(tmp_path: Path, name: str, value: str) -> None:
    """The CLI validates the settings first: one stderr line naming the variable, exit 2, and never
    the value (a key may be in it). An empty secret is fine (it means none), so that case passes."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTTRAIN_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # this checkout's code, from any cwd
    out = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], env={**env, name: value}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    if name == "POSTTRAIN_S3_SECRET_KEY":
        assert out.returncode == 0, out.stderr
        return
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith(f"error: bad setting {name}:") and value not in lines[0].split(":", 2)[2]


def test_onednn_linear_setting_reaches_the_kernel_from_a_dotenv(tmp_path: Path) -> None:
    """``POSTTRAIN_ONEDNN_LINEAR=0`` in ``.env``: once the settings load, the engine's kernel keeps
    MKL; the Ray workers are told the same."""
    (tmp_path / ".env").write_text("POSTTRAIN_ONEDNN_LINEAR=0\n")
    code = ("import os, sys; os.chdir(sys.argv[1]); from components.settings import get_settings\n"
            "get_settings(); from kernels.cpu_linear import onednn_available; print(onednn_available())")
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTTRAIN_")}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env={**env, "PYTHONPATH": str(root)},
                         capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert Settings(_env_file=None, state_dir=tmp_path).worker_env()["POSTTRAIN_ONEDNN_LINEAR"] == "1"
    assert Settings(_env_file=None, state_dir=tmp_path, onednn_linear=False).worker_env()[
        "POSTTRAIN_ONEDNN_LINEAR"] == "0"
