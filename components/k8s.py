"""Kubernetes manifests for running posttrain on a cluster, rendered from settings and a recipe.

What `posttrain k8s render` writes beside the Prefect work-pool template (tasks/k8s.py renders
that one through prefect-kubernetes' own job-configuration code):

* ``secret.yaml``: the Secret the pods read S3 keys from, with empty values to fill in. Secret
  values never appear in any rendered file: every pod takes the Secret's keys as environment
  variables (``envFrom.secretRef``);
* ``raycluster.yaml``: a KubeRay ``RayCluster`` (``ray.io/v1``) for ``POSTTRAIN_EXECUTOR=ray``:
  one head, a GPU worker group;
* ``vllm.yaml``: the vLLM Deployment (N replicas, readiness and liveness on ``/health``) and its
  Service for the registered model (components/serving/manifests.py).

Plain dicts dumped as YAML; ``validate`` checks every document against the Kubernetes OpenAPI
schema of a named version with kubernetes-validate. kubernetes-validate knows only built-in
kinds, so a ``RayCluster`` is checked through its pod templates (each validated as a v1
``PodTemplate``) plus the KubeRay fields the operator requires.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from components.serving.manifests import ManifestConfig, vllm_manifests
from components.settings import Settings

KUBERNETES_VERSION = "1.34.0"  # what the tests validate against (kubernetes-validate 1.37.0 knows 1.13-1.37)
RAY_VERSION = "2.60.0"  # the version requirements.lock pins
SECRET_NAME = "posttrain-secrets"
# Settings that are secrets: keys of SECRET_NAME, each becoming the pod's environment variable.
SECRET_ENV = ("POSTTRAIN_S3_ACCESS_KEY", "POSTTRAIN_S3_SECRET_KEY")


class K8sConfig(BaseModel):
    """What the rendered manifests run: image, namespace, GPU sizes and replica counts."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field("ghcr.io/posttrain/posttrain:latest", description="posttrain image (flows, Ray workers)")
    namespace: str = Field("posttrain", description="Kubernetes namespace of every object")
    gpus_per_job: int = Field(1, ge=0, description="nvidia.com/gpu limit of a Prefect flow-run Job")
    ray_workers: int = Field(2, ge=0, description="replicas of the Ray GPU worker group")
    gpus_per_ray_worker: int = Field(1, ge=0, description="nvidia.com/gpu limit per Ray worker")
    vllm_replicas: int = Field(2, ge=1, description="replicas of the vLLM Deployment")
    vllm_image: str = Field("vllm/vllm-openai:v0.32.0", description="vLLM server image")
    prefect_api_url: str = Field("http://prefect-server.posttrain.svc:4200/api",
                                 description="the Prefect API the pods report to")


def dns_name(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:50] or "posttrain"


def pod_env(settings: Settings, cfg: K8sConfig) -> dict[str, str]:
    """The plain environment of every posttrain pod (secrets come from ``env_from``).

    Local paths (the state folder) are not carried over: on a cluster the artifact root and the
    MLflow tracking URI must be shared services (S3 and an MLflow server)."""
    env = {"PREFECT_API_URL": cfg.prefect_api_url, "OMP_WAIT_POLICY": "PASSIVE"}
    if settings.remote_root:
        env["POSTTRAIN_ARTIFACT_ROOT"] = settings.remote_root
    if settings.mlflow_tracking_uri and not settings.mlflow_tracking_uri.startswith("sqlite"):
        env["POSTTRAIN_MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    if settings.s3_endpoint_url:
        env["POSTTRAIN_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    return env


def env_from() -> list[dict[str, Any]]:
    """The secret settings, by reference: the Secret's keys become environment variables."""
    return [{"secretRef": {"name": SECRET_NAME, "optional": True}}]


def secret_manifest(cfg: K8sConfig) -> dict[str, Any]:
    """The Secret the pods read, with empty values: fill them in with ``kubectl create secret``
    or an external secret store; posttrain never writes a secret value to a file."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": SECRET_NAME, "namespace": cfg.namespace},
            "stringData": {key: "" for key in SECRET_ENV}}


def _ray_container(name: str, cfg: K8sConfig, env: dict[str, str], gpus: int, cpu: str, memory: str) -> dict:
    limits: dict[str, str] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    return {"name": name, "image": cfg.image, "env": [{"name": k, "value": v} for k, v in env.items()],
            "envFrom": env_from(),
            "resources": {"limits": limits, "requests": {"cpu": cpu, "memory": memory}},
            "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}}}


def raycluster_manifest(name: str, settings: Settings, cfg: K8sConfig) -> dict[str, Any]:
    """A KubeRay RayCluster: the head (no GPU, dashboard and client ports) and one GPU worker group."""
    env = pod_env(settings, cfg)
    head = _ray_container("ray-head", cfg, env, 0, "4", "16Gi")
    head["ports"] = [{"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
                     {"containerPort": 10001, "name": "client"}]
    worker = _ray_container("ray-worker", cfg, env, cfg.gpus_per_ray_worker, "8", "64Gi")
    return {
        "apiVersion": "ray.io/v1", "kind": "RayCluster",
        "metadata": {"name": dns_name(f"{name}-ray"), "namespace": cfg.namespace},
        "spec": {
            "rayVersion": RAY_VERSION,
            "headGroupSpec": {"rayStartParams": {"dashboard-host": "0.0.0.0"},
                              "template": {"metadata": {"labels": {"app": "posttrain-ray-head"}},
                                           "spec": {"containers": [head]}}},
            "workerGroupSpecs": [{
                "groupName": "gpu", "replicas": cfg.ray_workers, "minReplicas": 0,
                "maxReplicas": max(cfg.ray_workers, 1), "rayStartParams": {},
                "template": {"metadata": {"labels": {"app": "posttrain-ray-worker"}},
                             "spec": {"containers": [worker]}}}],
        },
    }


def vllm_documents(model_name: str, version: str, model_uri: str, cfg: K8sConfig) -> str:
    mcfg = ManifestConfig(image=cfg.vllm_image, namespace=cfg.namespace, replicas=cfg.vllm_replicas)
    return vllm_manifests(model_name, version, model_uri, mcfg)


def write_documents(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


class ManifestError(ValueError):
    """A rendered document that is not a valid object of the Kubernetes version."""


def validate(doc: dict[str, Any], version: str = KUBERNETES_VERSION) -> None:
    """Raise ``ManifestError`` (one line: kind, name, field path, reason) when ``doc`` is not a
    valid object of Kubernetes ``version``; strict: unknown fields are errors too."""
    import kubernetes_validate

    try:
        if doc.get("kind") == "RayCluster":
            _validate_raycluster(doc, version)
        else:
            kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "(top)"
        raise ManifestError(f"{doc.get('kind')} {doc.get('metadata', {}).get('name', '')}: {where}: "
                            f"{e.message}") from None


def _validate_raycluster(doc: dict[str, Any], version: str) -> None:
    import kubernetes_validate

    spec = doc["spec"]
    if doc.get("apiVersion") != "ray.io/v1" or not spec.get("rayVersion"):
        raise ValueError("a RayCluster needs apiVersion ray.io/v1 and spec.rayVersion")
    groups = [("headGroupSpec", spec["headGroupSpec"])] + [
        (f"workerGroupSpecs[{i}]", g) for i, g in enumerate(spec.get("workerGroupSpecs", []))]
    for where, group in groups:
        if "rayStartParams" not in group or "template" not in group:
            raise ValueError(f"RayCluster {where} needs rayStartParams and template")
        if where != "headGroupSpec" and not group.get("groupName"):
            raise ValueError(f"RayCluster {where} needs a groupName")
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate",
                        "metadata": {"name": "check", "namespace": doc["metadata"].get("namespace", "default")},
                        "template": group["template"]}
        kubernetes_validate.validate(pod_template, version, strict=True)
