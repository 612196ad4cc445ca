"""The run summary: what ran, whether it was cached, how long it took, what it produced."""

from __future__ import annotations

from typing import Any


def build_summary(flow_run_id: str, mlflow_run_id: str, results: dict, cached: dict[str, bool],
                  seconds: float) -> dict[str, Any]:
    stages = {}
    for name, res in results.items():
        stages[name] = {
            "cached": bool(cached.get(name, False)),
            "seconds": float(res.seconds) if not cached.get(name) else 0.0,
            "compute_seconds": float(res.seconds),
            "outputs": {k: r.model_dump(mode="json") for k, r in res.outputs.items()},
            "metrics": dict(res.metrics),
            "mlflow_run_id": res.info.get("mlflow_run_id"),
        }
        for extra in ("decision", "deployment"):
            if extra in res.info:
                stages[name][extra] = res.info[extra]
    return {"flow_run_id": flow_run_id, "mlflow_run_id": mlflow_run_id, "seconds": seconds, "stages": stages}


def markdown_summary(summary: dict, mlflow_url: str) -> str:
    lines = ["# posttrain run", "", f"MLflow run: [{summary['mlflow_run_id']}]({mlflow_url})", "",
             "| stage | cached | seconds | key metrics |", "|---|---|---|---|"]
    for name, s in summary["stages"].items():
        keys = list(s["metrics"].items())[:4]
        figs = ", ".join(f"{k}={v:.3g}" for k, v in keys)
        lines.append(f"| {name} | {'yes' if s['cached'] else 'no'} | {s['seconds']:.1f} | {figs} |")
    dep = summary["stages"].get("deploy", {}).get("deployment")
    if dep:
        base = mlflow_url.split("/#/")[0]
        page = f"{base}/#/models/{dep.get('model_name')}/versions/{dep.get('version')}"
        lines += ["", f"Registered model: [**{dep.get('model_name')}** version **{dep.get('version')}**]({page}) "
                  f"({dep.get('registered')}); gate: {dep.get('decision')}"]
        if dep.get("endpoint"):
            lines.append(f"Serving at `{dep['endpoint']}`")
    return "\n".join(lines)
