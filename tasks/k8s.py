"""The Prefect side of `posttrain k8s render`: a Kubernetes work-pool base job template for GPU
stages, made from prefect-kubernetes' own default template and rendered into the Job a flow run
would get by prefect-kubernetes' own job-configuration code (what its worker runs).

Changes to Prefect's default template: the image, namespace and plain environment default to
posttrain's; a ``gpu_count`` variable sets the container's ``nvidia.com/gpu`` limit; secrets reach
the pod as ``envFrom`` of the posttrain Secret, never as values in the template; the Job's
``completions``/``parallelism`` move from the pod spec (where Prefect's default has them) to the Job.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import yaml

from components.k8s import (
    KUBERNETES_VERSION,
    K8sConfig,
    env_from,
    pod_env,
    raycluster_manifest,
    secret_manifest,
    validate,
    vllm_documents,
    write_documents,
)
from components.settings import Settings


def gpu_base_job_template(settings: Settings, cfg: K8sConfig) -> dict[str, Any]:
    """``prefect work-pool create NAME --type kubernetes --base-job-template FILE`` takes this."""
    from prefect_kubernetes.worker import KubernetesWorker

    template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    job_spec = template["job_configuration"]["job_manifest"]["spec"]
    pod_spec = job_spec["template"]["spec"]
    # Prefect's default puts the Job's completions/parallelism in the pod spec, where the API
    # server drops them (and strict validation refuses them): they belong to the Job.
    for field in ("completions", "parallelism"):
        job_spec[field] = pod_spec.pop(field, 1)
    container = pod_spec["containers"][0]
    container["resources"]["limits"]["nvidia.com/gpu"] = "{{ gpu_count }}"
    container["envFrom"] = env_from()
    props = template["variables"]["properties"]
    props["gpu_count"] = {"title": "GPUs", "type": "integer", "default": cfg.gpus_per_job,
                          "description": "nvidia.com/gpu limit of the flow run's container"}
    props["image"]["default"] = cfg.image
    props["namespace"]["default"] = cfg.namespace
    props["env"]["default"] = pod_env(settings, cfg)
    return template


def preview_job(template: dict[str, Any], values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Job manifest prefect-kubernetes' worker would submit for a flow run of a deployment on
    this pool (with ``values`` as the deployment's job variables)."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    async def build() -> KubernetesWorkerJobConfiguration:
        # Rendering needs no server: the template holds no block or variable references, so the
        # client (required by the signature) is never called. It points nowhere on purpose.
        client = PrefectClient(api="http://127.0.0.1:9/api")
        return await KubernetesWorkerJobConfiguration.from_template_and_values(template, values or {}, client=client)

    job_cfg = asyncio.run(build())
    job_cfg.prepare_for_flow_run(FlowRun(id=uuid.UUID(int=0), flow_id=uuid.UUID(int=1), name="preview"))
    return job_cfg.job_manifest


def render(out: Path, settings: Settings, cfg: K8sConfig, recipe_name: str, model: tuple[str, str, str] | None,
           version: str = KUBERNETES_VERSION) -> list[Path]:
    """Write and validate every manifest under ``out``; ``model`` is (name, version, weights URI)
    of the registered model vLLM serves, or None (then no vllm.yaml). Nothing is written unless
    every document is valid for Kubernetes ``version``."""
    template = gpu_base_job_template(settings, cfg)
    job = preview_job(template)
    docs: dict[str, list[dict[str, Any]]] = {
        "prefect-job-preview.yaml": [job],
        "secret.yaml": [secret_manifest(cfg)],
        "raycluster.yaml": [raycluster_manifest(recipe_name, settings, cfg)],
    }
    if model is not None:
        docs["vllm.yaml"] = list(yaml.safe_load_all(vllm_documents(*model, cfg)))
    for group in docs.values():
        for doc in group:
            validate(doc, version)
    out.mkdir(parents=True, exist_ok=True)
    pool = out / "prefect-work-pool-gpu.json"
    pool.write_text(json.dumps(template, indent=2))
    return [pool] + [write_documents(out / name, group) for name, group in docs.items()]
