"""Stage 6: register the gate's choice in the MLflow registry and (optionally) serve it.

Alias moves: every registered version gets ``candidate``; a version the gate promoted gets
``champion`` and the version it replaces keeps ``previous``. Serving starts a new vLLM
server and only stops the old one after the new one answers (blue/green).
"""

from __future__ import annotations

import json
from pathlib import Path

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
    from components.stages.evaluate import serving_folder

    local = Path(ctx.extra["local_paths"][target])
    sub = serving_folder(local).relative_to(local).as_posix()
    source = ref["uri"] if sub == "." else f"{ref['uri'].rstrip('/')}/{sub}"
    from components.artifacts import sha256_dir

    tags["source_sha256"] = sha256_dir(serving_folder(local))
    version = tracker.register_model(name, source, run_id, tags)
    tracker.set_alias(name, "candidate", version)
    record.update({"model_name": name, "version": version, "source": source, "registered": target})
    metrics["registered"] = 1.0
    metrics["model_version"] = float(version)
    if chosen is not None:
        record["aliases"] = promote(tracker, name, version)
        metrics["promoted"] = 1.0
    if cfg.serve and chosen is not None:
        from components.serving.bluegreen import BlueGreenDeployer

        dep = BlueGreenDeployer.from_settings(ctx.extra["state_dir"]).deploy(serving_folder(local), version)
        record["endpoint"] = dep.endpoint
        metrics.update({k: float(v) for k, v in dep.metrics().items()})
    (out_dir / "deployment.json").write_text(json.dumps(record, indent=2, default=str))
    ctx.extra["deployment"] = record
    return metrics
