"""`posttrain k8s render` as an operator runs it: with a champion in the registry and S3 settings
(keys included) in the environment, the CLI writes the Prefect work-pool template, the Job a flow
run would get, the RayCluster, the vLLM Deployment + Service and the Secret; every document is a
valid object of the named Kubernetes version (kubernetes-validate, strict); no secret value is in
any file; and a real Prefect server accepts the template as a Kubernetes work pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

from components.settings import Settings
from components.stages.deploy import promote
from components.tracking import Tracker

ROOT = Path(__file__).resolve().parents[2]
K8S = "1.34.0"
SECRET = "s3cr3t-value-never-written"


def _render(tmp: Path, state: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "POSTTRAIN_", "MLFLOW_"))}
    env.update({"POSTTRAIN_STATE_DIR": str(state), "POSTTRAIN_ARTIFACT_ROOT": "s3://models/posttrain",
                "POSTTRAIN_S3_ENDPOINT_URL": "http://s3.example:8333", "POSTTRAIN_S3_ACCESS_KEY": "AKIAEXAMPLE",
                "POSTTRAIN_S3_SECRET_KEY": SECRET, "OMP_WAIT_POLICY": "PASSIVE"})
    return subprocess.run([sys.executable, "-m", "flows.cli", "k8s", "render", *args], env=env, cwd=tmp,
                          capture_output=True, text=True, timeout=300)


def _champion(state: Path) -> str:
    trk = Tracker(Settings(state_dir=state))
    run = trk.start_run("deploy")
    v = trk.register_model("posttrain-smoke", "s3://models/posttrain/compress/abc/rtn-w8", run, {"model_sha256": "0" * 64})
    trk.end_run(run)
    promote(trk, "posttrain-smoke", v)
    return v


def test_render_writes_valid_manifests_without_secrets(tmp_path):
    state = tmp_path / "state"
    version = _champion(state)
    out = tmp_path / "k8s"
    r = _render(tmp_path, state, "--out", str(out), "--recipe", "smoke", "--gpus", "2", "--ray-workers", "3",
                "--vllm-replicas", "4", "--kubernetes-version", K8S)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"valid for Kubernetes {K8S}" in r.stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == ["prefect-job-preview.yaml", "prefect-work-pool-gpu.json", "raycluster.yaml", "secret.yaml",
                     "vllm.yaml"]
    for p in out.iterdir():  # no secret value anywhere, only references to the Secret
        assert SECRET not in p.read_text() and "AKIAEXAMPLE" not in p.read_text(), p

    docs = {p.name: list(yaml.safe_load_all(p.read_text())) for p in out.glob("*.yaml")}
    for name in ("prefect-job-preview.yaml", "secret.yaml", "vllm.yaml"):
        for doc in docs[name]:
            kubernetes_validate.validate(doc, K8S, strict=True)

    (job,) = docs["prefect-job-preview.yaml"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert job["kind"] == "Job" and container["resources"]["limits"]["nvidia.com/gpu"] == 2
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["POSTTRAIN_ARTIFACT_ROOT"] == "s3://models/posttrain" and "POSTTRAIN_S3_SECRET_KEY" not in env
    assert container["envFrom"] == [{"secretRef": {"name": "posttrain-secrets", "optional": True}}]
    (secret,) = docs["secret.yaml"]
    assert set(secret["stringData"]) == {"POSTTRAIN_S3_ACCESS_KEY", "POSTTRAIN_S3_SECRET_KEY"}
    assert set(secret["stringData"].values()) == {""}

    dep, svc = docs["vllm.yaml"]
    assert dep["spec"]["replicas"] == 4 and svc["kind"] == "Service"
    vllm = dep["spec"]["template"]["spec"]["containers"][0]
    assert vllm["readinessProbe"]["httpGet"]["path"] == "/health"
    assert vllm["args"][:2] == ["--model", "s3://models/posttrain/compress/abc/rtn-w8"]
    assert dep["metadata"]["labels"]["posttrain/model-version"] == version

    (ray,) = docs["raycluster.yaml"]
    assert ray["apiVersion"] == "ray.io/v1" and ray["spec"]["rayVersion"] == "2.60.0"
    (workers,) = ray["spec"]["workerGroupSpecs"]
    assert workers["replicas"] == 3
    for group in (ray["spec"]["headGroupSpec"], workers):  # the pod templates are valid pods
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
                                      "template": group["template"]}, K8S, strict=True)

    _prefect_accepts_the_work_pool(json.loads((out / "prefect-work-pool-gpu.json").read_text()))


def _prefect_accepts_the_work_pool(template: dict) -> None:
    """The template is what `prefect work-pool create --type kubernetes --base-job-template` sends."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name="posttrain-gpu", type="kubernetes", base_job_template=template))
            pool = client.read_work_pool("posttrain-gpu")
    assert pool.base_job_template["variables"]["properties"]["gpu_count"]["default"] == 2  # --gpus 2
    assert pool.base_job_template["job_configuration"] == template["job_configuration"]


def test_render_without_a_champion_says_so_and_skips_vllm(tmp_path):
    out = tmp_path / "k8s"
    r = _render(tmp_path, tmp_path / "state", "--out", str(out), "--recipe", "smoke")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no champion of posttrain-smoke in the registry: vllm.yaml not written (pass --model-uri)" in r.stdout
    assert not (out / "vllm.yaml").exists() and (out / "raycluster.yaml").exists()


def test_render_mistakes_are_one_line(tmp_path):
    r = _render(tmp_path, tmp_path / "state", "--out", str(tmp_path / "k8s"), "--recipe", "no-such-recipe")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no-such-recipe" in r.stderr, r.stderr
    (tmp_path / "file").write_text("")
    r = _render(tmp_path, tmp_path / "state", "--out", str(tmp_path / "file" / "k8s"), "--recipe", "smoke")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "file" in r.stderr, r.stderr
