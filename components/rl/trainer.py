"""GRPO-family training loop, run in resumable segments of K steps.

A segment starts from a checkpoint folder (or the base model), runs steps [start, end),
and writes a checkpoint holding everything the next segment needs: model weights,
optimiser and scheduler state, the online difficulty tracker, and the metric history.
All randomness is derived from (seed, step), so a resumed run is bitwise identical to an
uninterrupted one on CPU.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from components.artifacts import RUN_INFO_DIR, run_info_dir, split_measurements
from components.engines.base import SamplingParams
from components.rewards import get_reward
from components.rl.advantages import batch_normalize, group_advantages, zero_variance_groups
from components.rl.batch import TrainBatch, build_batch, plan_microbatches, response_logprobs
from components.rl.length import max_new_tokens_at, overlong_penalty
from components.rl.losses import policy_loss
from components.rl.partial import RolloutBuffer, generate_with_partial
from components.rl.rollout_engine import start_engine, sync_weights
from components.rl.rollouts import write_rollouts

MetricsFn = Callable[[dict[str, float], int], None]
ProgressFn = Callable[[str, float], None]


def messages_for(row: dict) -> list[dict[str, str]]:
    msgs = []
    if row.get("system"):
        msgs.append({"role": "system", "content": row["system"]})
    msgs.append({"role": "user", "content": row["prompt"]})
    return msgs


def _meta(row: dict) -> dict:
    m = row.get("meta")
    if isinstance(m, str):
        try:
            return json.loads(m) if m else {}
        except json.JSONDecodeError:
            return {}
    return m or {}


class RewardScorer:
    """Scores completions with each row's task reward; counts errors/timeouts."""

    def __init__(self):
        self._fns: dict[str, object] = {}
        self.errors: dict[str, int] = {}

    def __call__(self, row: dict, text: str) -> float:
        task = row.get("task") or "numeric"
        fn = self._fns.get(task)
        if fn is None:
            fn = self._fns[task] = get_reward(task)
        res = fn(text, row["answer"], _meta(row))
        if res.error:
            self.errors[res.error] = self.errors.get(res.error, 0) + 1
        return float(res.score)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _lr_lambda(warmup: int) -> Callable[[int], float]:
    return lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0


class PromptSampler:
    """Uniform (selection-weighted) or Thompson sampling over the training prompts."""

    def __init__(self, rows: list[dict], weights: list[float] | None, mode: str, tracker=None, seed: int = 0):
        self.rows = rows
        w = np.asarray(weights if weights is not None else [1.0] * len(rows), dtype=np.float64)
        self.p = w / w.sum()
        self.mode = mode
        self.tracker = tracker
        self.seed = seed

    def sample(self, step: int, k: int, attempt: int = 0, exclude: set[int] | None = None) -> list[int]:
        rng = np.random.default_rng([self.seed, step, attempt])
        candidates = [i for i in range(len(self.rows)) if not exclude or i not in exclude]
        if not candidates:
            return []
        k = min(k, len(candidates))
        if self.mode == "thompson" and self.tracker is not None:
            ids = [self.rows[i]["id"] for i in candidates]
            chosen = self.tracker_sample(ids, k, rng)
            index = {self.rows[i]["id"]: i for i in candidates}
            return [index[c] for c in chosen]
        p = self.p[candidates]
        p = p / p.sum()
        return [candidates[i] for i in rng.choice(len(candidates), size=k, replace=False, p=p)]

    def tracker_sample(self, ids: list[str], k: int, rng: np.random.Generator) -> list[str]:
        # The generator is seeded per (step, attempt) so a resumed run draws the same batch.
        from components.difficulty.online import thompson_pick

        return thompson_pick(self.tracker, ids, k, rng)


def _make_tracker(difficulty: list | None, decay: float):
    from components.difficulty.online import OnlineTracker

    if difficulty:
        return OnlineTracker.from_records(difficulty, decay=decay)
    return OnlineTracker(decay=decay)


def run_segment(
    *,
    base_model_dir: Path,
    init_checkpoint: Path | None,
    rows: list[dict],
    weights: list[float] | None,
    difficulty: list | None,
    cfg,
    start_step: int,
    end_step: int,
    out_dir: Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    log_metrics: MetricsFn | None = None,
    progress: ProgressFn | None = None,
    log_table: Callable[[list[dict], str], None] | None = None,
    engine_factory: Callable[..., object] | None = None,
) -> dict[str, float]:
    """Run steps ``[start_step, end_step)`` and write a checkpoint to ``out_dir``.

    ``log_table`` receives a sample of the segment's last rollouts (a table in MLflow).
    ``engine_factory`` (default ``rollout_engine.start_engine``, same arguments) makes the rollout
    engine; the segment closes it at its end or on an error, which stops a vLLM server."""
    from components.models import load_model, load_tokenizer

    torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.loss.variant == "drgrpo" and cfg.loss.drgrpo_norm_len is None:
        # Dr. GRPO needs a constant normaliser; the generation budget is the natural one.
        cfg = cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"drgrpo_norm_len": cfg.max_new_tokens})})
    model = _build_policy(cfg, base_model_dir, init_checkpoint, device, dtype)
    tok = load_tokenizer(base_model_dir)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps))
    tracker = _make_tracker(difficulty, cfg.tracker_decay)
    history: list[dict] = []
    if init_checkpoint:
        state = torch.load(init_checkpoint / "trainer_state.pt", weights_only=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        tracker.load_state_dict(json.loads((init_checkpoint / "tracker.json").read_text()))
        history = read_history(init_checkpoint)
        if state["step"] != start_step:
            raise ValueError(f"checkpoint is at step {state['step']}, segment starts at {start_step}")
    buffer = RolloutBuffer(cfg.partial.max_buffer)
    if init_checkpoint and (init_checkpoint / "partial_buffer.json").exists():
        buffer.load_state_dict(json.loads((init_checkpoint / "partial_buffer.json").read_text()))
    ref_model = None
    if cfg.loss.kl_coef > 0:
        ref_model = load_model(base_model_dir, device, dtype).eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
    sampler = PromptSampler(rows, weights, cfg.sampler, tracker, cfg.seed)
    scorer = RewardScorer()
    rollout_dir = out_dir / "rollouts"
    rollout_dir.mkdir(parents=True, exist_ok=True)
    # Exported policy weights and server logs of a vLLM engine: scratch, never part of the checkpoint.
    engine_dir = Path(tempfile.mkdtemp(prefix="posttrain-rollout-engine-"))
    try:
        engine = (engine_factory or start_engine)(cfg, model, tok, base_model_dir, start_step, dtype, engine_dir)
        try:
            for step in range(start_step, end_step):
                m = train_step(model, opt, ref_model, engine, tok, sampler, scorer, tracker, cfg, step,
                               rollout_dir, buffer)
                if step + 1 < end_step:  # the segment's engine stops after its last step
                    m.update(sync_weights(engine, model, step + 1, base_model_dir, engine_dir))
                m["lr"] = sched.get_last_lr()[0]
                sched.step()
                m["peak_rss_mb"] = _peak_rss_mb()
                history.append({"step": step, **m})
                if log_metrics:
                    log_metrics(m, step)
                if progress:
                    progress(f"step {step + 1}/{cfg.steps} reward {m['reward_mean']:.3f}",
                             (step + 1 - start_step) / max(1, end_step - start_step))
        finally:
            engine.close()
    finally:
        shutil.rmtree(engine_dir, ignore_errors=True)
    summary: dict[str, float] = {}
    if log_table is not None and end_step > start_step:
        import pyarrow.parquet as pq

        last = pq.read_table(rollout_dir / f"step-{end_step - 1:05d}.parquet").to_pylist()
        log_table(last[:64], f"rollouts/step-{end_step - 1:05d}.json")
    if cfg.lora is not None:
        # The adapter (and optimiser state over it) is what the next segment resumes from;
        # downstream stages get plain merged weights they can load without peft.
        model.save_pretrained(out_dir / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(out_dir / "model")
    tok.save_pretrained(out_dir / "model")
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": end_step},
               out_dir / "trainer_state.pt")
    (out_dir / "tracker.json").write_text(json.dumps(tracker.state_dict()))
    (out_dir / "partial_buffer.json").write_text(json.dumps(buffer.state_dict()))
    write_history(out_dir, history)
    if history:
        last = history[-1]
        summary = {k: v for k, v in last.items() if isinstance(v, (int, float))}
    summary["update_sparsity"] = update_sparsity(model, base_model_dir, device, dtype)
    return summary


def write_history(out_dir: Path, history: list[dict]) -> None:
    """Per-step figures: ``metrics.jsonl`` holds what the run computed (part of the checkpoint's
    digest); timings and memory peaks go to the undigested ``_run_info/timings.jsonl``."""
    split = [split_measurements(h) for h in history]
    (out_dir / "metrics.jsonl").write_text("".join(json.dumps(k) + "\n" for k, _ in split))
    (run_info_dir(out_dir) / "timings.jsonl").write_text(
        "".join(json.dumps({"step": k["step"], **m}) + "\n" for k, m in split))


def read_history(ckpt_dir: Path) -> list[dict]:
    """The per-step figures of a checkpoint, both files of ``write_history`` merged by step."""
    ckpt_dir = Path(ckpt_dir)
    rows = [json.loads(line) for line in (ckpt_dir / "metrics.jsonl").read_text().splitlines() if line]
    timings = ckpt_dir / RUN_INFO_DIR / "timings.jsonl"
    extra = {}
    if timings.exists():
        extra = {t["step"]: t for t in map(json.loads, filter(None, timings.read_text().splitlines()))}
    return [{**h, **extra.get(h["step"], {})} for h in rows]


def _build_policy(cfg, base_model_dir: Path, init_checkpoint: Path | None, device: str, dtype):
    """Full-parameter policy, or a peft LoRA wrapper around the frozen base model."""
    from components.models import load_model

    if cfg.lora is None:
        return load_model(init_checkpoint / "model" if init_checkpoint else base_model_dir, device, dtype)
    from peft import LoraConfig, PeftModel, get_peft_model

    base = load_model(base_model_dir, device, dtype)
    if init_checkpoint is not None:
        return PeftModel.from_pretrained(base, init_checkpoint / "adapter", is_trainable=True)
    torch.manual_seed(cfg.seed)  # LoRA A matrices are randomly initialised
    lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(base, lcfg)


def update_sparsity(model, base_model_dir: Path, device: str, dtype) -> float:
    """Share of parameters that did NOT change since the base model (RL updates are sparse)."""
    from components.models import load_model

    base = dict(load_model(base_model_dir, device, dtype).named_parameters())
    same = total = 0
    for n, p in model.named_parameters():
        q = base.get(n)
        if q is None:
            continue
        same += int((p.detach() == q.detach()).sum())
        total += p.numel()
    return same / max(1, total)


def _group_sizes(rows: list[dict], cfg, tracker) -> list[int]:
    """Rollouts per prompt: a constant group size, or DARS allocation of the same total budget
    towards hard-but-solvable prompts (by the online posterior)."""
    if cfg.rollout_allocation != "dars":
        return [cfg.group_size] * len(rows)
    from components.difficulty.online import allocate_rollouts

    return allocate_rollouts([tracker.posterior(r["id"]) for r in rows], total=len(rows) * cfg.group_size,
                             min_per_prompt=2, max_per_prompt=2 * cfg.group_size)


def _generate_groups(engine, rows: list[dict], sizes: list[int], params: SamplingParams):
    """One generate call per distinct group size; returns groups, prompt ids, seconds, tokens."""
    by_n: dict[int, list[int]] = {}
    for k, n in enumerate(sizes):
        by_n.setdefault(n, []).append(k)
    groups: list = [None] * len(rows)
    pids: list = [None] * len(rows)
    secs, toks = 0.0, 0
    for n, members in sorted(by_n.items()):
        p = params if len(by_n) == 1 else params.model_copy(update={"seed": params.seed + 31 * n})
        b = engine.generate([messages_for(rows[k]) for k in members], n, p)
        for j, k in enumerate(members):
            groups[k], pids[k] = b.groups[j], b.prompt_token_ids[j]
        secs += b.seconds
        toks += b.generated_tokens
    return groups, pids, secs, toks


def _generate_partial(engine, sampler, scorer, tracker, cfg, step, params, buffer):
    """APRIL: over-provision, stop at the target number of complete groups, buffer the rest."""
    want = math.ceil(cfg.prompts_per_step * cfg.partial.over_provision)
    held = buffer.row_ids()
    skip = {i for i, r in enumerate(sampler.rows) if str(r["id"]) in held}
    rows = [sampler.rows[i] for i in sampler.sample(step, want, 0, skip)]
    groups, stats = generate_with_partial(engine, rows, cfg.group_size, params, cfg.prompts_per_step, buffer,
                                          engine.policy_version, messages_for, cfg.partial)
    ts = time.perf_counter()
    rewards = [[scorer(g.row, s.text) for s in g.samples] for g in groups]
    score_s = time.perf_counter() - ts
    tracker.update([g.row["id"] for g in groups for _ in g.samples], [x for r in rewards for x in r])
    triples = [(g.row, g.prompt_token_ids, g.samples) for g in groups]
    return triples, rewards, stats, score_s


def train_step(model, opt, ref_model, engine, tok, sampler, scorer, tracker, cfg, step, rollout_dir,
               buffer: RolloutBuffer | None = None) -> dict:
    t0 = time.perf_counter()
    budget = max_new_tokens_at(step, cfg.length_schedule) if cfg.length_schedule else cfg.max_new_tokens
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=budget,
                            seed=cfg.seed * 100003 + step)
    chosen: list[int] = []
    groups = []
    rewards_all: list[list[float]] = []
    gen_s = score_s = 0.0
    gen_tokens = 0
    zero_var_seen = 0
    groups_seen = 0
    exclude: set[int] = set()
    extra: dict[str, float] = {}
    rounds = 0 if (cfg.partial.enabled and buffer is not None) else 1 + (cfg.max_refill_rounds if cfg.dynamic_sampling else 0)
    if rounds == 0:
        groups, rewards_all, extra, score_s = _generate_partial(engine, sampler, scorer, tracker, cfg, step,
                                                                params, buffer)
        gen_s, gen_tokens = extra.get("partial/seconds", 0.0), int(extra.get("partial/tokens_generated", 0))
        zv = [bool(zero_variance_groups(torch.tensor([g]))[0]) for g in rewards_all]
        zero_var_seen, groups_seen = sum(zv), len(zv)
    for attempt in range(rounds):
        need = cfg.prompts_per_step - len(chosen)
        if need <= 0:
            break
        idx = sampler.sample(step, need, attempt, exclude)
        if not idx:
            break
        exclude.update(idx)
        rows = [sampler.rows[i] for i in idx]
        params_a = params.model_copy(update={"seed": params.seed + 7919 * attempt})
        sizes = _group_sizes(rows, cfg, tracker)
        keep = [k for k, n in enumerate(sizes) if n > 0]
        idx, rows, sizes = [idx[k] for k in keep], [rows[k] for k in keep], [sizes[k] for k in keep]
        gen_groups, gen_pids, secs, toks = _generate_groups(engine, rows, sizes, params_a)
        gen_s += secs
        gen_tokens += toks
        ts = time.perf_counter()
        rw = [[scorer(r, s.text) for s in g] for r, g in zip(rows, gen_groups)]
        score_s += time.perf_counter() - ts
        tracker.update([r["id"] for r, g in zip(rows, gen_groups) for _ in g], [x for g in rw for x in g])
        zv = [bool(zero_variance_groups(torch.tensor([g]))[0]) for g in rw]
        zero_var_seen += sum(zv)
        groups_seen += len(zv)
        last_round = attempt == (cfg.max_refill_rounds if cfg.dynamic_sampling else 0)
        for i, r, g, pids, rr, z in zip(idx, rows, gen_groups, gen_pids, rw, zv):
            if cfg.dynamic_sampling and z and not last_round:
                continue
            chosen.append(i)
            groups.append((r, pids, g))
            rewards_all.append(rr)
    if not groups:
        raise RuntimeError(f"step {step}: no complete groups were generated")
    # Groups may differ in size (DARS allocation), so advantages are computed group by group.
    shaped = [list(r) for r in rewards_all]
    if cfg.overlong is not None:
        for k, (_, _, g) in enumerate(groups):
            pen = overlong_penalty([s.num_tokens for s in g], budget, cfg.overlong.buffer_len, cfg.overlong.penalty)
            shaped[k] = [a + b for a, b in zip(shaped[k], pen)]
    adv = [group_advantages(torch.tensor([r], dtype=torch.float32), cfg.advantage, cfg.std_normalize)[0]
           for r in shaped]
    if cfg.batch_normalize:
        flat_adv = batch_normalize(torch.cat(adv)[None, :])[0]
        adv = list(torch.split(flat_adv, [len(r) for r in shaped]))
    rewards = torch.tensor([x for r in rewards_all for x in r], dtype=torch.float32)
    prompts, responses, elps, vers, advs = [], [], [], [], []
    for (_row, pids, g), a in zip(groups, adv):
        for s, ai in zip(g, a.tolist()):
            prompts.append(pids)
            responses.append(s.token_ids)
            elps.append(s.logprobs)
            vers.append(s.versions)
            advs.append(ai)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    tb = build_batch(prompts, responses, elps, vers, advs, pad)
    write_rollouts(rollout_dir / f"step-{step:05d}.parquet", step, groups, rewards_all, engine.policy_version)

    tu = time.perf_counter()
    stats, grad_norms = _update(model, opt, ref_model, engine, tb, [len(g) for _, _, g in groups], cfg, step)
    upd_s = time.perf_counter() - tu
    lengths = [s.num_tokens for _, _, g in groups for s in g]
    truncated = [s.finish_reason == "length" for _, _, g in groups for s in g]
    flat_r = rewards
    metrics = {
        "reward_mean": float(flat_r.mean()),
        "reward_std": float(flat_r.std(unbiased=False)),
        "pass_rate": float((flat_r >= 0.5).float().mean()),
        "response_len_mean": float(np.mean(lengths)),
        "response_len_max": float(max(lengths)),
        "truncated_frac": float(np.mean(truncated)),
        "zero_variance_frac": zero_var_seen / max(1, groups_seen),
        "groups_sampled": float(groups_seen),
        "batch_mean_difficulty": float(np.mean([1 - tracker.posterior(r["id"]).mean for r, _, _ in groups])),
        "grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0,
        "gen_tokens_per_s": gen_tokens / max(gen_s, 1e-9),
        "train_tokens_per_s": float(tb.resp_mask.sum()) * cfg.epochs / max(upd_s, 1e-9),
        "time_generate_s": gen_s,
        "time_score_s": score_s,
        "time_update_s": upd_s,
        "time_step_s": time.perf_counter() - t0,
        "reward_errors": float(sum(scorer.errors.values())),
    }
    for k, v in stats.items():
        metrics[k] = float(np.max(v) if k.endswith("_max") else np.mean(v))
    metrics["max_new_tokens"] = float(budget)
    metrics["stale_token_frac"] = float((tb.versions < engine.policy_version).float().mul(tb.resp_mask).sum()
                                        / tb.resp_mask.sum().clamp(min=1))
    metrics.update({k: float(v) for k, v in extra.items() if isinstance(v, (int, float))})
    engine.policy_version = step + 1
    return metrics


def _all_logps(model, tb: TrainBatch, cfg) -> torch.Tensor:
    """No-grad log-probs [B, T] of every rollout, micro-batch by micro-batch (groups are contiguous)."""
    step = cfg.micro_batch_size
    return torch.cat([
        response_logprobs(model, tb.select(list(range(i, min(len(tb), i + step)))), cfg.temperature,
                          cfg.logprob_chunk_size, share_prompts=cfg.share_prompts)[0].cpu()
        for i in range(0, len(tb), step)
    ])


def engine_logps_are_old(engine, model, tb: TrainBatch) -> bool:
    """The engine's log-probs are the old policy's when the engine samples with the trainer's own
    model object (so the same weights and dtype) in float32 or wider, and every token was sampled
    by the current policy version (no carried-over partial-rollout tokens)."""
    if getattr(engine, "model", None) is not model:
        return False
    if next(model.parameters()).dtype not in (torch.float32, torch.float64):
        return False
    version = getattr(engine, "policy_version", None)
    return bool((tb.versions[tb.resp_mask.bool()] == version).all())


def _update(model, opt, ref_model, engine, tb: TrainBatch, group_sizes: list[int], cfg, step: int):
    """The optimisation passes over one rollout batch; returns per-micro-batch stats and grad norms.

    Old-policy log-probs (needed when the batch takes several optimiser steps) come from the engine
    when ``engine_logps_are_old``, else from a no-grad forward; the ratio's reference is then the
    policy that sampled, and TIS against the engine log-probs stays exactly the behaviour correction."""
    model.train()
    n = len(tb)
    order_rng = torch.Generator().manual_seed(cfg.seed * 7 + step)
    needs_old = cfg.epochs > 1 or cfg.minibatch_size < n
    from_engine = needs_old and engine_logps_are_old(engine, model, tb)
    with torch.no_grad():
        old_logp = (tb.engine_logp * tb.resp_mask) if from_engine else (_all_logps(model, tb, cfg) if needs_old else None)
        ref_logp = _all_logps(ref_model, tb, cfg) if ref_model is not None else None
    stats: dict[str, list[float]] = {}
    grad_norms: list[float] = []
    for _ in range(cfg.epochs):
        for micro in plan_microbatches(group_sizes, cfg.minibatch_size, cfg.micro_batch_size, order_rng,
                                       cfg.share_prompts):
            mb_idx = torch.cat(micro)
            mb_tokens = float(tb.resp_mask[mb_idx].sum().clamp(min=1))
            model.zero_grad(set_to_none=True)
            for sub in micro:
                # With engine old log-probs the engine/trainer gap is measured before the first update only.
                measure_gap = not from_engine or not grad_norms
                old = old_logp[sub] if old_logp is not None else None
                _micro_step(model, tb.select(sub), old, ref_logp[sub] if ref_logp is not None else None, cfg,
                            len(sub) / len(mb_idx), mb_tokens, stats,
                            gap=(None if from_engine else old) if measure_gap else False)
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            grad_norms.append(float(gn))
            opt.step()
    return stats, grad_norms


def _micro_step(model, part: TrainBatch, old_logp, ref_logp, cfg, share: float, mb_tokens: float,
                stats: dict[str, list[float]], gap: torch.Tensor | None | bool = None) -> None:
    """Forward, loss and backward of one micro-batch (gradients accumulate); appends its stats.

    ``gap``: the pre-update trainer log-probs the engine's are compared with (None: this forward's,
    False: not measured)."""
    logp, ent = response_logprobs(model, part, cfg.temperature, cfg.logprob_chunk_size,
                                  share_prompts=cfg.share_prompts)
    dev = logp.device
    mask = part.resp_mask.to(dev)
    old = old_logp.to(dev) if old_logp is not None else logp.detach()
    loss, lm = policy_loss(
        logp, old, part.advantages.to(dev), mask, cfg.loss,
        ref_logp=ref_logp.to(dev) if ref_logp is not None else None,
        behaviour_logp=part.engine_logp.to(dev) if cfg.loss.tis_cap is not None else None,
        entropy=ent,
    )
    scale = float(mask.sum()) / mb_tokens if cfg.loss.variant == "dapo" else share
    (loss * scale).backward()
    for k, v in lm.items():
        stats.setdefault(k, []).append(v)
    stats.setdefault("loss", []).append(float(loss.detach()))
    if gap is not False:
        # Engine vs trainer log-probs of the same (pre-update) policy.
        trainer = logp.detach() if gap is None else gap.to(dev)
        gap = (part.engine_logp.to(dev) - trainer).abs() * mask
        stats.setdefault("logprob_mismatch", []).append(float(gap.sum() / mask.sum().clamp(min=1)))
        stats.setdefault("logprob_mismatch_max", []).append(float(gap.max()) if gap.numel() else 0.0)
