"""Kubernetes manifests for serving a registry model with vLLM, generated per promotion.

Plain dicts dumped as YAML (no kubernetes client needed): a Deployment running the vLLM
OpenAI server on the registered model URI, with readiness/liveness probes on /health, and a
ClusterIP Service in front of it. An operator applies them elsewhere with ``kubectl apply -f``.
"""

from __future__ import annotations

import re

import yaml
from pydantic import BaseModel, ConfigDict, Field


class ManifestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = "vllm/vllm-openai:v0.32.0"
    namespace: str = "default"
    port: int = 8000
    gpus: int = 1
    cpu: str = "4"
    memory: str = "16Gi"
    max_model_len: int = 2048
    replicas: int = 1
    extra_args: list[str] = Field(default_factory=list)


def _dns_name(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:50] or "model"


def vllm_manifests(model_name: str, version: str, model_uri: str, cfg: ManifestConfig | None = None) -> str:
    """Multi-document YAML: Deployment + Service for one registered model version."""
    cfg = cfg or ManifestConfig()
    name = _dns_name(f"{model_name}-v{version}")
    labels = {"app": _dns_name(model_name), "posttrain/model-version": str(version)}
    limits = {"cpu": cfg.cpu, "memory": cfg.memory}
    if cfg.gpus:
        limits["nvidia.com/gpu"] = str(cfg.gpus)
    probe = {"httpGet": {"path": "/health", "port": cfg.port}, "periodSeconds": 10}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": cfg.namespace, "labels": labels,
                     "annotations": {"posttrain/model-uri": model_uri}},
        "spec": {
            "replicas": cfg.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{
                    "name": "vllm",
                    "image": cfg.image,
                    "args": ["--model", model_uri, "--served-model-name", model_name, "--host", "0.0.0.0",
                             "--port", str(cfg.port), "--max-model-len", str(cfg.max_model_len), *cfg.extra_args],
                    "ports": [{"containerPort": cfg.port, "name": "http"}],
                    "resources": {"limits": limits, "requests": {"cpu": cfg.cpu, "memory": cfg.memory}},
                    "readinessProbe": {**probe, "initialDelaySeconds": 30},
                    "livenessProbe": {**probe, "initialDelaySeconds": 120, "failureThreshold": 6},
                }]},
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": cfg.namespace, "labels": labels},
        "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": cfg.port, "name": "http"}]},
    }
    return yaml.safe_dump_all([deployment, service], sort_keys=False)
