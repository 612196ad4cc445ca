"""Stage 6: register the gate's choice in the MLflow registry and (optionally) serve it.

Alias moves: every registered version gets ``candidate``; a version the gate promoted gets
``champion`` and the version it replaces keeps ``previous``. Serving starts a new vLLM
server and only stops the old one after the new one answers (blue/green).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from components.artifacts import run_info_dir, sha256_dir
from components.stages.evaluate import serving_folder

# Tags that say what a registered version *is*: a candidate with the same values is the same
# version (a rerun after a kill reuses it instead of registering a duplicate).
IDENTITY_TAGS = ("model_sha256", "source_sha256", "candidate_name", "recipe_digest", "dataset_sha256",
                 "difficulty_sha256", "rl_checkpoint_sha256", "base_model_sha256")


class RegistryError(ValueError):
    """A registry request that cannot be done as asked; nothing was changed."""


def last_model_name(tracker) -> str | None:
    """The registered model of the newest version in this state folder's registry."""
    mv = tracker.latest_version()
    return mv.name if mv is not None else None


def _version(tracker, name: str, version: str):
    mv = tracker.find_version(name, str(version))
    if mv is None:
        known = tracker.version_numbers(name)
        have = f"versions: {', '.join(known)}" if known else "it has no versions (or does not exist)"
        raise RegistryError(f"model {name} has no version {version!r} ({have}); nothing changed")
    return mv


def _move(tracker, name: str, wanted: dict[str, str | None]) -> None:
    """Set aliases in order; if any move fails, put every alias back as it was, then re-raise."""
    before = {a: getattr(tracker.version_by_alias(name, a), "version", None) for a in wanted}
    try:
        for alias, version in wanted.items():
            if version is None:
                tracker.delete_alias(name, alias)
            else:
                tracker.set_alias(name, alias, str(version))
    except BaseException:
        for alias, version in before.items():
            try:
                if version is None:
                    tracker.delete_alias(name, alias)
                else:
                    tracker.set_alias(name, alias, str(version))
            except Exception:  # noqa: BLE001 - keep restoring the others
                pass
        raise


def promote(tracker, name: str, version: str) -> dict:
    """Make ``version`` the champion; the old champion becomes ``previous``. An unknown version
    raises ``RegistryError`` before any alias moves."""
    _version(tracker, name, version)
    old = tracker.version_by_alias(name, "champion")
    if old is not None and str(old.version) == str(version):
        return {"champion": str(version), "previous": None}
    moves: dict[str, str | None] = {"champion": str(version)}
    if old is not None:
        moves = {"previous": str(old.version), **moves}
    _move(tracker, name, moves)
    return {"champion": str(version), "previous": str(old.version) if old else None}


def rollback(tracker, name: str) -> dict:
    """Swap ``champion`` back to ``previous``; refuses (changing nothing) without a distinct previous."""
    prev = tracker.version_by_alias(name, "previous")
    cur = tracker.version_by_alias(name, "champion")
    if prev is None or (cur is not None and str(prev.version) == str(cur.version)):
        what = "no 'previous' version" if prev is None else f"'previous' is the champion (v{prev.version})"
        raise RegistryError(f"model {name} has {what}: nothing to roll back to; nothing changed")
    moves: dict[str, str | None] = {"champion": str(prev.version)}
    if cur is not None:
        moves["previous"] = str(cur.version)
    _move(tracker, name, moves)
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
    version = tracker.register_model(name, source, lineage.get("mlflow_parent_run_id") or run_id, tags,
                                     identity=IDENTITY_TAGS, example_prompt=EXAMPLE_PROMPT)
    record["logged_model_id"] = tracker.find_version(name, version).tags.get("logged_model_id")
    tracker.set_alias(name, "candidate", version)
    record.update({"model_name": name, "version": version, "source": source, "registered": target})
    metrics["registered"] = 1.0
    metrics["model_version"] = float(version)
    if chosen is not None:
        record["aliases"] = promote(tracker, name, version)
        metrics["promoted"] = 1.0
        from components.serving.manifests import vllm_manifests

        # Generated per promotion so an operator can `kubectl apply -f` it elsewhere (it names
        # this machine's artifact path and the registry's version: a run record).
        (run_info_dir(out_dir) / "k8s-vllm.yaml").write_text(vllm_manifests(name, version, source))
        ctx.log_artifact(run_info_dir(out_dir) / "k8s-vllm.yaml", None)
    _write_record(out_dir, record, tags)
    if cfg.serve and chosen is not None:
        record.update(serve(cfg, Path(ctx.extra["state_dir"]), serving_folder(local), version, name))
        metrics.update({k: float(record[k]) for k in ("startup_s", "smoke_latency_s", "smoke_tokens_per_s")})
    _write_record(out_dir, record, tags)
    ctx.extra["deployment"] = record
    return metrics


def _write_record(out_dir: Path, record: dict, tags: dict) -> None:
    """``deploy.json`` (digested): what was decided about which content. The full record (registry
    version, paths, endpoint, pid, timings) depends on the registry's history and the machine:
    ``_run_info/deployment.json``."""
    defining = {"chosen": record.get("chosen"), "registered": record.get("registered"),
                "model_name": record.get("model_name"), "decision": record.get("decision"),
                "model_sha256": tags.get("model_sha256"), "source_sha256": tags.get("source_sha256"),
                "promoted": "aliases" in record}
    (out_dir / "deploy.json").write_text(json.dumps(defining, indent=2, default=str))
    (run_info_dir(out_dir) / "deployment.json").write_text(json.dumps(record, indent=2, default=str))
