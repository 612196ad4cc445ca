"""Stage 5: evaluate every candidate on the held-out split and decide which may deploy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from components.artifacts import RUN_INFO_DIR, run_info_dir, sha256_dir, split_measurements
from components.engines.base import SamplingParams
from components.engines.transformers_engine import engine_for
from components.evaluation.gate import decide
from components.evaluation.plots import comparison_table, pareto_plot
from components.evaluation.runner import CandidateReport, Completion, compare_to_champion, evaluate_candidate
from components.prompts import messages_for
from components.scoring import RewardScorer
from components.stages.curate import load_split


def model_folder(path: Path) -> Path:
    """Candidates are model folders, or payloads holding one under ``model/`` (RL checkpoints,
    compressed variants)."""
    path = Path(path)
    return path / "model" if (path / "model" / "config.json").exists() else path


def serving_folder(path: Path) -> Path:
    """What vLLM should load: the compressed-tensors export where there is one."""
    path = Path(path)
    return path / "compressed" if (path / "compressed" / "config.json").exists() else model_folder(path)


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin"))


def make_generate(model_dir: Path, device: str, dtype):
    from components.models import load_model, load_tokenizer

    engine = engine_for(load_model(model_dir, device, dtype), load_tokenizer(model_dir), "evaluate")

    def generate(prompts, n, temperature, max_new_tokens, seed):
        batch = engine.generate(prompts, n, SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed))
        return [[Completion(text=s.text, num_tokens=s.num_tokens) for s in g] for g in batch.groups]

    return generate


def evaluate_model(name: str, model_dir: Path, rows: list[dict], cfg, device: str, dtype, progress=None) -> CandidateReport:
    gen = make_generate(model_dir, device, dtype)
    scorer = RewardScorer()
    # The runner passes prompt strings; map them back to chat messages (system prompt included).
    msgs_by_prompt = {r["prompt"]: messages_for(r) for r in rows}

    def generate(prompts, n, temperature, max_new_tokens, seed):
        return gen([msgs_by_prompt[p] for p in prompts], n, temperature, max_new_tokens, seed)

    return evaluate_candidate(
        name, generate, rows, lambda row, text: scorer(row, text), cfg,
        size_bytes=dir_size(serving_folder(model_dir.parent if model_dir.name == "model" else model_dir)),
        progress=(lambda phase, done, total: progress(f"{name}: {phase}", done / max(1, total))) if progress else None,
    )


def run(cfg, candidates: dict[str, Path], dataset_dir: Path, out_dir: Path, ctx,
        champion: tuple[str, Path] | None = None, champion_is: str | None = None,
        dtype=torch.float32) -> dict[str, float]:
    """``champion_is`` names the candidate that is already the champion (evaluated once)."""
    rows = load_split(dataset_dir, "eval")
    if cfg.max_rows:
        rows = rows[: cfg.max_rows]
    if not rows:
        raise ValueError("the eval split is empty: raise curate.eval_fraction")
    reports: dict[str, CandidateReport] = {}
    todo = dict(candidates)
    if champion is not None:
        todo["champion"] = champion[1]
    for i, (name, path) in enumerate(todo.items()):
        ctx.progress(f"evaluating {name} ({i + 1}/{len(todo)})", i / len(todo))
        reports[name] = evaluate_model(
            name, model_folder(path), rows, cfg, ctx.device, dtype,
            progress=lambda msg, frac, i=i: ctx.progress(f"{msg} ({i + 1}/{len(todo)})", (i + frac) / len(todo)))
    if champion_is is not None and champion_is in reports:
        reports["champion"] = reports[champion_is].model_copy(update={"name": "champion"})
    champ = reports.get("champion")
    base = reports.get("base")
    ref = champ or base
    if ref is not None:
        for n in list(reports):
            if n not in ("champion",) and reports[n] is not ref:
                reports[n] = compare_to_champion(reports[n], ref)
    contenders = [r for n, r in reports.items() if n not in ("base", "champion")]
    decision = decide(contenders, champ, base, cfg.gate)
    table = comparison_table(list(reports.values()))
    _write_reports(out_dir, reports, candidates)
    (out_dir / "decision.json").write_text(decision.model_dump_json(indent=2))
    pareto_plot(list(reports.values()), out_dir / "pareto.png", chosen=decision.chosen)
    ctx.log_table(table, "comparison_table.json")
    ctx.log_artifact(out_dir / "pareto.png", None)
    ctx.log_artifact(out_dir / "decision.json", None)
    ctx.extra["comparison_table"] = table
    ctx.extra["decision"] = decision.summary
    ctx.extra["chosen"] = decision.chosen
    metrics: dict[str, float] = {"promote": float(decision.chosen is not None)}
    for n, r in reports.items():
        for key in ("greedy_pass1", "pass_at_1_sampled", "pass_at_k", "mean_output_tokens", "tokens_per_correct", "latency_s"):
            v = getattr(r, key, None)
            if isinstance(v, (int, float)) and math.isfinite(v):
                metrics[f"{n}.{key}"] = float(v)
        if r.negative_flips is not None:
            metrics[f"{n}.negative_flips"] = float(r.negative_flips)
    return metrics


def _write_reports(out_dir: Path, reports: dict[str, CandidateReport], candidates: dict[str, Path]) -> None:
    """``reports.json``: what each candidate scored (digested). Latencies and the candidates'
    local folders describe this run and machine: ``_run_info/`` (outside the digest)."""
    dumped = {n: r.model_dump(mode="json") for n, r in reports.items()}
    measured = {}
    for n, d in dumped.items():
        dumped[n], measured[n] = split_measurements(d)
    (out_dir / "reports.json").write_text(json.dumps(dumped, default=str))
    info = run_info_dir(out_dir)
    (info / "timings.json").write_text(json.dumps(measured, indent=2, default=str))
    (info / "candidates.json").write_text(json.dumps({n: str(p) for n, p in candidates.items()}))


def read_decision(eval_dir: Path) -> dict:
    return json.loads((Path(eval_dir) / "decision.json").read_text())


def read_reports(eval_dir: Path) -> dict:
    """Every candidate's report, its run records (latency) merged back in."""
    reports = json.loads((Path(eval_dir) / "reports.json").read_text())
    timings = Path(eval_dir) / RUN_INFO_DIR / "timings.json"
    measured = json.loads(timings.read_text()) if timings.exists() else {}
    return {n: {**r, **measured.get(n, {})} for n, r in reports.items()}


def model_digest(path: Path) -> str:
    return sha256_dir(path)
