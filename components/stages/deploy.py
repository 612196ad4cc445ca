"""Stage 6: register the gate's choice in the MLflow registry and (optionally) serve it.

Alias moves: every registered version gets ``candidate``; a version the gate promoted gets
``champion`` and the version it replaces keeps ``previous``. Serving starts a new vLLM
server and only stops the old one after the new one answers (blue/green).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from components.artifacts import sha256_dir
from components.stages.evaluate import serving_folder

MODULES = ("components.stages.deploy", "components.tracking", "components.serving")


def promote(tracker, name: str, version: str) -> dict:
    """Make ``version`` the champion; the old champion becomes ``previous``."""
    old = tracker.version_by_alias(name, "champion")
    if old is not None and str(old.version) == str(version):
        return {"champion": version, "previous": None}
    if old is not None:
        tracker.set_alias(name, "previous", str(old.version))
    tracker.set_alias(name, "champion", str(version))
    return {"champion": version, "previous": str(old.version) if old else None}


def rollback(tracker, name: str) -> dict:
    """Swap ``champion`` back to ``previous``."""
    prev = tracker.version_by_alias(name, "previous")
    cur = tracker.version_by_alias(name, "champion")
    if prev is None:
        raise ValueError(f"model {name} has no 'previous' version to roll back to")
    tracker.set_alias(name, "champion", str(prev.version))
    if cur is not None:
        tracker.set_alias(name, "previous", str(cur.version))
    return {"champion": str(prev.version), "previous": str(cur.version) if cur else None}


def serve(cfg, state_dir: Path, model_dir: Path, version: str, name: str) -> dict:
    """Blue/green: the new server must pass its health check and a smoke request before the
    old one stops. Registration has already happened when this runs, so a missing vLLM
    environment fails here with the command that creates it. A compressed checkpoint this
    machine's vLLM cannot run is served from its dense sibling (see ``serving.formats``)."""
    from components.serving.bluegreen import BlueGreenDeployer
    from components.serving.formats import servable_folder

    choice = servable_folder(model_dir)
    deployer = BlueGreenDeployer(state_dir / "deployments.json",
                                 server_cfg=cfg.vllm.server_config(served_model_name=name),
                                 ports=(cfg.port, cfg.port + 1))
    dep = deployer.deploy(choice.folder, version, name=name)
    return {"endpoint": dep.endpoint, "served_model_name": dep.served_model_name, "pid": dep.pid,
            "startup_s": dep.startup_s, "smoke_latency_s": dep.smoke_latency_s,
            "smoke_tokens_per_s": dep.smoke_tokens_per_s, "served_dir": str(choice.folder),
            "served_format": choice.format, "serving_fallback": choice.reason or None,
            "curl": curl_example(dep.endpoint, dep.served_model_name)}


EXAMPLE_PROMPT = "What is 7 + 5? Give only the final number."


def curl_example(endpoint: str, model: str, prompt: str = EXAMPLE_PROMPT) -> str:
    """A ready-to-paste request against an OpenAI-compatible ``endpoint`` (``.../v1``)."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}],
                       "max_tokens": 16, "temperature": 0})
    return f"curl -s {endpoint.rstrip('/')}/chat/completions -H 'Content-Type: application/json' -d {shlex.quote(body)}"


def run(cfg, chosen: str | None, candidate_refs: dict, lineage: dict, decision: dict, run_id: str,
        out_dir: Path, ctx) -> dict[str, float]:
    tracker = ctx.tracker
    record: dict = {"chosen": chosen, "decision": decision.get("summary", "")}
    metrics: dict[str, float] = {"registered": 0.0, "promoted": 0.0}
    name = cfg.registered_model_name
    target = chosen
    if target is None:
        # Nothing beat the champion: register the RL result as a candidate only, for inspection.
        target = "rl" if "rl" in candidate_refs else next(iter(candidate_refs))
    ref = candidate_refs[target]
    tags = {**lineage, "candidate_name": target, "model_sha256": ref["sha256"], "gate": decision.get("summary", "")[:4000]}
    local = Path(ctx.extra["local_paths"][target])
    sub = serving_folder(local).relative_to(local).as_posix()
    source = ref["uri"] if sub == "." else f"{ref['uri'].rstrip('/')}/{sub}"
    tags["source_sha256"] = sha256_dir(serving_folder(local))
    # Registered from the flow's parent run, so its MLflow page lists the version on its first screen.
    version = tracker.register_model(name, source, lineage.get("mlflow_parent_run_id") or run_id, tags)
    record["logged_model_id"] = tracker.log_model_card(lineage.get("mlflow_parent_run_id") or run_id, name,
                                                       version, EXAMPLE_PROMPT)
    tracker.set_alias(name, "candidate", version)
    record.update({"model_name": name, "version": version, "source": source, "registered": target})
    metrics["registered"] = 1.0
    metrics["model_version"] = float(version)
    if chosen is not None:
        record["aliases"] = promote(tracker, name, version)
        metrics["promoted"] = 1.0
        from components.serving.manifests import vllm_manifests

        # Generated per promotion so an operator can `kubectl apply -f` it elsewhere.
        (out_dir / "k8s-vllm.yaml").write_text(vllm_manifests(name, version, source))
        ctx.log_artifact(out_dir / "k8s-vllm.yaml", None)
    (out_dir / "deployment.json").write_text(json.dumps(record, indent=2, default=str))
    if cfg.serve and chosen is not None:
        record.update(serve(cfg, Path(ctx.extra["state_dir"]), serving_folder(local), version, name))
        metrics.update({k: float(record[k]) for k in ("startup_s", "smoke_latency_s", "smoke_tokens_per_s")})
    (out_dir / "deployment.json").write_text(json.dumps(record, indent=2, default=str))
    ctx.extra["deployment"] = record
    return metrics
