"""Stage 5: evaluate every candidate on the held-out split and decide which may deploy."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

import torch

from components.artifacts import (
    RUN_INFO_DIR,
    model_folder,
    run_info_dir,
    serving_folder,
    sha256_dir,
    split_measurements,
)
from components.engines.base import SamplingParams
from components.engines.transformers_engine import engine_for
from components.environments.base import EnvironmentSpec
from components.evaluation.gate import decide, greedy_gate_failures
from components.evaluation.plots import comparison_table, pareto_plot
from components.evaluation.runner import (
    CandidateReport,
    Completion,
    GreedyPass,
    SampledPass,
    build_report,
    compare_to_champion,
    eval_rows,
    evaluate_candidate,
    greedy_pass,
    sampled_pass,
)
from components.prompts import messages_for
from components.rl.env_rollouts import run_groups
from components.scoring import RewardScorer
from components.stages.curate import load_split


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin"))


def make_generate(model_dir: Path, device: str, dtype, environment: EnvironmentSpec | None = None):
    """``generate(items, n, ...)``: items are chat messages, or with ``environment`` the rows whose
    episodes are run (a completion is then the episode: its last answer, reward and tool calls)."""
    from components.models import load_model, load_tokenizer

    engine = engine_for(load_model(model_dir, device, dtype), load_tokenizer(model_dir), "evaluate")

    def generate(prompts, n, temperature, max_new_tokens, seed):
        params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        if environment is not None:
            groups, _pids, _s = run_groups(engine, environment, prompts, [n] * len(prompts), params)
            return [[Completion(text=s.text, num_tokens=s.num_tokens, reward=s.reward,
                                tool_calls=int((s.episode or {}).get("tool_calls", 0))) for s in g] for g in groups]
        batch = engine.generate(prompts, n, params)
        return [[Completion(text=s.text, num_tokens=s.num_tokens) for s in g] for g in batch.groups]

    return generate


def _inputs(rows: list[dict], environment: EnvironmentSpec | None) -> dict[str, Any]:
    """What ``make_generate`` takes for each prompt: its chat messages, or its row for an environment."""
    return {r["prompt"]: (r if environment is not None else messages_for(r)) for r in rows}


def evaluate_model(name: str, model_dir: Path, rows: list[dict], cfg, device: str, dtype, progress=None) -> CandidateReport:
    env = getattr(cfg, "environment", None)
    gen = make_generate(model_dir, device, dtype, env)
    scorer = RewardScorer()
    # The runner passes prompt strings; map them back to chat messages (system prompt included).
    msgs_by_prompt = _inputs(rows, env)

    def generate(prompts, n, temperature, max_new_tokens, seed):
        return gen([msgs_by_prompt[p] for p in prompts], n, temperature, max_new_tokens, seed)

    return evaluate_candidate(
        name, generate, rows, lambda row, text: scorer(row, text), cfg,
        size_bytes=dir_size(serving_folder(model_dir.parent if model_dir.name == "model" else model_dir)),
        progress=(lambda phase, done, total: progress(f"{name}: {phase}", done / max(1, total))) if progress else None,
    )


class PassCache(Protocol):
    """One model's pass results kept across runs, by the model's digest, the evaluation config and
    the code version (the task layer keys and stores them): a model already evaluated the same way
    is not evaluated again. ``phase`` is ``greedy`` or ``sampled``."""

    def get(self, name: str, phase: str) -> dict | None: ...

    def put(self, name: str, phase: str, value: dict) -> None: ...


class NoPassCache:
    def get(self, name: str, phase: str) -> dict | None:
        return None

    def put(self, name: str, phase: str, value: dict) -> None:
        return None


P = TypeVar("P", GreedyPass, SampledPass)


class _Candidate:
    """One model under evaluation: each pass comes from the cache or is run; the model is loaded
    only when a pass has to run, once."""

    def __init__(self, name: str, path: Path, rows: list[dict], cfg, ctx, dtype, cache: PassCache,
                 tick: Callable[[str], None]):
        self.name, self.path, self.rows, self.cfg, self.ctx, self.dtype = name, path, rows, cfg, ctx, dtype
        self.cache, self.tick = cache, tick
        self._generate: Any = None
        self._scorer = RewardScorer()
        self.passes: dict[str, str] = {}  # phase -> "cached" | "run" | "skipped"
        self.size_bytes = dir_size(serving_folder(path))

    def generate(self):
        if self._generate is None:
            env = getattr(self.cfg, "environment", None)
            gen = make_generate(model_folder(self.path), self.ctx.device, self.dtype, env)
            msgs = _inputs(self.rows, env)
            self._generate = lambda prompts, n, t, m, seed: gen([msgs[p] for p in prompts], n, t, m, seed)
        return self._generate

    def _pass(self, phase: str, cls: type[P], fn: Callable[..., P]) -> P:
        hit = self.cache.get(self.name, phase)
        if hit is not None:
            self.tick(f"{phase} (cached)")
            self.passes[phase] = "cached"
            return cls.model_validate(hit)
        self.passes[phase] = "run"
        result = fn(self.generate(), self.rows, lambda row, text: self._scorer(row, text), self.cfg, self.tick)
        self.cache.put(self.name, phase, result.model_dump(mode="json"))
        return result

    def greedy(self) -> GreedyPass | None:
        return self._pass("greedy", GreedyPass, greedy_pass) if self.cfg.greedy else None

    def sampled(self) -> SampledPass:
        return self._pass("sampled", SampledPass, sampled_pass)

    def report(self, greedy: GreedyPass | None, sampled: SampledPass | None, skipped: str | None = None):
        return build_report(self.name, self.rows, self.cfg, greedy, sampled, self.size_bytes, skipped)


def _evaluation_order(names: list[str], champion_is: str | None) -> list[str]:
    """References first (the champion, or the candidate that is the champion, then base): the
    others' greedy gate is checked against them."""
    refs = [n for n in ("champion", champion_is, "base") if n is not None and n in names]
    return list(dict.fromkeys(refs + names))


def _ticker(ctx, name: str, i: int, total: int) -> Callable[[str], None]:
    def tick(phase: str) -> None:
        ctx.progress(f"{name}: {phase} ({i + 1}/{total})", (i + 0.5) / total)

    return tick


def _evaluate_all(cfg, todo: dict[str, Path], rows: list[dict], ctx, dtype, cache: PassCache,
                  champion_is: str | None) -> dict[str, CandidateReport]:
    """Every model's report. A contender whose greedy pass already fails the gate against the
    references gets no sampled pass (its report says so). ``ctx.extra["passes"]`` says, per
    model and pass, whether it was read from the cache, run, or skipped."""
    order = _evaluation_order(list(todo), champion_is)
    refs = {n for n in ("champion", champion_is, "base") if n is not None and n in todo}
    reports: dict[str, CandidateReport] = {}
    for i, name in enumerate(order):
        ctx.progress(f"evaluating {name} ({i + 1}/{len(order)})", i / len(order))
        cand = _Candidate(name, todo[name], rows, cfg, ctx, dtype, cache, _ticker(ctx, name, i, len(order)))
        greedy = cand.greedy()
        failures: list[str] = []
        if greedy is not None and name not in refs:
            champ = reports.get("champion") or (reports[champion_is] if champion_is in reports else None)
            failures = greedy_gate_failures(cand.report(greedy, None), champ, reports.get("base"), cfg.gate)
        if failures:
            reports[name] = cand.report(greedy, None, "greedy gate failed: " + "; ".join(failures))
            cand.passes["sampled"] = "skipped"
        else:
            reports[name] = cand.report(greedy, cand.sampled())
        ctx.extra.setdefault("passes", {})[name] = cand.passes
    return {n: reports[n] for n in todo}


def load_eval_rows(cfg, dataset_dir: Path) -> list[dict]:
    """The held-out rows every model is evaluated on (``max_rows`` of the eval split)."""
    rows = load_split(dataset_dir, "eval")
    if cfg.max_rows:
        rows = rows[: cfg.max_rows]
    if not rows:
        raise ValueError("the eval split is empty: raise curate.eval_fraction")
    return eval_rows(rows, cfg)[0]


class DictPassCache:
    """Passes handed in by value (the per-model pass tasks' outputs) in front of another cache."""

    def __init__(self, passes: dict[str, dict[str, dict]], behind: PassCache | None = None):
        self.passes, self.behind = passes, behind or NoPassCache()

    def get(self, name: str, phase: str) -> dict | None:
        return self.passes.get(name, {}).get(phase) or self.behind.get(name, phase)

    def put(self, name: str, phase: str, value: dict) -> None:
        self.behind.put(name, phase, value)


def run_passes(cfg, name: str, model_dir: Path, dataset_dir: Path, out_dir: Path, ctx,
               dtype=torch.float32, cache: PassCache | None = None) -> dict[str, float]:
    """One model's passes (greedy when configured, and sampled) as ``passes.json`` in ``out_dir``:
    the unit the evaluation fans out over; the gate (``run``) reads them back. The sampled pass
    runs even for a contender whose greedy pass will fail the gate (that is not known before the
    references' passes end); ``run`` leaves it out of that contender's report as before."""
    rows = load_eval_rows(cfg, dataset_dir)
    cand = _Candidate(name, model_dir, rows, cfg, ctx, dtype, cache or NoPassCache(),
                      lambda phase: ctx.progress(f"{name}: {phase}", 0.5))
    greedy, sampled = cand.greedy(), cand.sampled()
    passes: dict[str, dict] = {"sampled": sampled.model_dump(mode="json")}
    timings: dict[str, float] = {}
    if greedy is not None:
        passes["greedy"] = greedy.model_dump(mode="json", exclude={"latency"})
        timings["greedy_latency"] = greedy.latency  # a run record: outside the payload's digest
    (out_dir / "passes.json").write_text(json.dumps(passes, sort_keys=True))
    (run_info_dir(out_dir) / "passes.json").write_text(json.dumps({**cand.passes, **timings}))
    metrics = {"sampled_correct": float(sum(sampled.correct))}
    if greedy is not None:
        metrics["greedy_pass1"] = sum(greedy.correct) / max(1, len(greedy.correct))
    return metrics


def read_passes(pass_dir: Path) -> dict[str, dict]:
    """A ``run_passes`` folder's passes, the greedy latency merged back in."""
    passes = json.loads((Path(pass_dir) / "passes.json").read_text())
    info = Path(pass_dir) / RUN_INFO_DIR / "passes.json"
    latency = json.loads(info.read_text()).get("greedy_latency", 0.0) if info.exists() else 0.0
    if "greedy" in passes:
        passes["greedy"] = {**passes["greedy"], "latency": latency}
    return passes


def run(cfg, candidates: dict[str, Path], dataset_dir: Path, out_dir: Path, ctx,
        champion: tuple[str, Path] | None = None, champion_is: str | None = None,
        dtype=torch.float32, cache: PassCache | None = None) -> dict[str, float]:
    """``champion_is`` names the candidate that is already the champion (evaluated once);
    ``cache`` keeps pass results across runs (none: every model is evaluated)."""
    rows = load_eval_rows(cfg, dataset_dir)
    todo = dict(candidates)
    if champion is not None:
        todo["champion"] = champion[1]
    reports = _evaluate_all(cfg, todo, rows, ctx, dtype, cache or NoPassCache(), champion_is)
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
    (run_info_dir(out_dir) / "passes.json").write_text(json.dumps(ctx.extra.get("passes", {}), indent=2))
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
        for key in ("greedy_pass1", "pass_at_1_sampled", "pass_at_k", "mean_output_tokens", "tokens_per_correct", "latency_s",
                    "tool_call_rate", "tool_call_rate_sampled"):
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
