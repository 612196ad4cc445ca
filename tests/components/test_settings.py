"""Settings: where things go with a local or an s3:// artifact root, and where the keys may appear."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
