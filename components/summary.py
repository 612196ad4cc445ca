"""The run summary: what ran, whether it was cached, how long it took, what it produced.

Also what a person looks at first: each stage's key figures (terminal lines, Prefect logs, the
Markdown summary) and the headline metric names of the MLflow first screen.
"""

from __future__ import annotations

from typing import Any

# The figures worth a glance per stage (first match of the stage label's part before ':').
KEY_FIGURES: dict[str, tuple[str, ...]] = {
    "prepare_model": ("params",),
    "curate": ("rows_out", "eval_rows"),
    "estimate_difficulty": ("prompts", "mean_pass_rate", "samples_used", "saved_fraction"),
    "rl_train": ("reward_mean", "pass_rate", "segments", "segments_cached"),
    "compress": ("compressed_size_mb", "dense_size_mb", "sparsity", "perplexity"),
    "evaluate": ("base.greedy_pass1", "rl.greedy_pass1", "promote"),
    "deploy": ("registered", "model_version", "promoted"),
}

# MLflow's run page sorts chart sections by name and puts metrics without a '/' ("Model
# metrics") last, charts alphabetically inside a section. Logging the RL headline a second time
# under 'reward/' and 'train/' makes those two sections the first screen of the rl_train run:
# reward/mean, reward/pass_rate, then train/entropy, train/kl, train/kl_rollout, train/length.
# The plain names stay (tests, benchmarks and the README read them).
RL_HEADLINE: dict[str, str] = {
    "reward_mean": "reward/mean",
    "pass_rate": "reward/pass_rate",
    "kl": "train/kl",
    "mismatch_k3": "train/kl_rollout",
    "entropy": "train/entropy",
    "response_len_mean": "train/length",
}


def with_aliases(metrics: dict[str, Any], aliases: dict[str, str] | None) -> dict[str, Any]:
    """``metrics`` plus a copy of each aliased one under its headline name."""
    if not aliases:
        return metrics
    return {**metrics, **{aliases[k]: v for k, v in metrics.items() if k in aliases}}


def key_figures(label: str, metrics: dict[str, Any], info: dict | None = None) -> dict[str, Any]:
    """The few figures of a stage (by its label, e.g. ``compress:rtn-w8``) worth printing."""
    names = KEY_FIGURES.get(label.split(":")[0], ())
    figs: dict[str, Any] = {k: metrics[k] for k in names if k in metrics}
    chosen = (info or {}).get("chosen")
    if label == "evaluate" and chosen:
        figs["chosen"] = chosen
        if f"{chosen}.greedy_pass1" in metrics:
            figs[f"{chosen}.greedy_pass1"] = metrics[f"{chosen}.greedy_pass1"]
    return figs


def headline_metrics(results: dict) -> dict[str, float]:
    """The parent run's first screen: held-out pass@1 (greedy) of base, RL and the chosen
    variant, and their sizes, from the evaluate stage's comparison table."""
    ev = results.get("evaluate")
    if ev is None:
        return {}
    rows = {r["name"]: r for r in ev.info.get("comparison_table", [])}
    chosen = ev.info.get("chosen")
    dep = results.get("deploy")
    if chosen is None and dep is not None:
        chosen = (dep.info.get("deployment") or {}).get("chosen")
    out: dict[str, float] = {}
    for who, name in (("base", "base"), ("rl", "rl"), ("chosen", chosen)):
        row = rows.get(name) if name else None
        if row is None:
            continue
        if row.get("greedy_pass1") is not None:
            out[f"heldout_pass1/{who}"] = float(row["greedy_pass1"])
        if row.get("size_mb") is not None:
            out[f"size_mb/{who}"] = float(row["size_mb"])
    return out


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
            "key_figures": key_figures(name, res.metrics, res.info),
            "mlflow_run_id": res.info.get("mlflow_run_id"),
        }
        for extra in ("decision", "deployment", "passes"):
            if extra in res.info:
                stages[name][extra] = res.info[extra]
    return {"flow_run_id": flow_run_id, "mlflow_run_id": mlflow_run_id, "seconds": seconds, "stages": stages}


def _cell(text: str) -> str:
    """Table cell text: a '|' would end the cell."""
    return str(text).replace("|", "\\|")


def markdown_summary(summary: dict, mlflow_url: str) -> str:
    lines = ["# posttrain run", "", f"MLflow run: [{summary['mlflow_run_id']}]({mlflow_url})", "",
             "| stage | cached | seconds | key figures |", "|---|---|---|---|"]
    for name, s in summary["stages"].items():
        figs = s.get("key_figures")
        if figs is None:
            figs = key_figures(name, s["metrics"])
        text = ", ".join(f"{k}={v:.3g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in figs.items())
        lines.append(f"| {_cell(name)} | {'yes' if s['cached'] else 'no'} | {s['seconds']:.1f} | {_cell(text)} |")
    dep = summary["stages"].get("deploy", {}).get("deployment")
    if dep:
        base = mlflow_url.split("/#/")[0]
        page = f"{base}/#/models/{dep.get('model_name')}/versions/{dep.get('version')}"
        # Bold inside a link renders as literal '**' in Prefect's Markdown: plain link text.
        lines += ["", f"Registered model: [{dep.get('model_name')} version {dep.get('version')}]({page}) "
                  f"({dep.get('registered')})", "", f"Gate: {dep.get('decision')}"]
        if dep.get("endpoint"):
            lines += ["", f"Serving at `{dep['endpoint']}`"]
    return "\n".join(lines)
