"""An RL segment: steps ``[start, end)`` from a checkpoint (or the base model) to a checkpoint.

The checkpoint holds everything the next segment needs: model weights (and the LoRA adapter),
optimiser and scheduler state, the online difficulty tracker, the partial-rollout buffer and the
per-step metric history. All randomness is derived from (seed, step), so a resumed run is bitwise
identical to an uninterrupted one on CPU.

Each step chains the collector (``components.rl.collector``) and the learner
(``components.rl.learner``); ``components.rl.metrics`` turns both into the step's figures.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from components.artifacts import RUN_INFO_DIR, run_info_dir, split_measurements
from components.difficulty.online import OnlineTracker
from components.models import load_tokenizer
from components.rl.collector import Collector, PromptSampler, make_tracker
from components.rl.config import RLConfig
from components.rl.distributed import DistributedLearner
from components.rl.learner import Learner, advantages, train_batch
from components.rl.metrics import peak_rss_mb, step_metrics
from components.rl.partial import RolloutBuffer
from components.rl.policy import (
    build_policy,
    enable_gradient_checkpointing,
    reference_policy,
    save_policy,
    update_sparsity,
)
from components.rl.rollout_engine import start_engine, sync_weights
from components.rl.rollouts import transcripts_markdown, write_rollouts
from components.scoring import RewardScorer

MetricsFn = Callable[[dict[str, float], int], None]
ProgressFn = Callable[[str, float], None]
TableFn = Callable[[list[dict], str], None]
ArtifactFn = Callable[[Path, "str | None"], None]
EngineFactory = Callable[..., Any]


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


@dataclass
class SegmentState:
    """What a segment carries from step to step and from checkpoint to checkpoint."""

    cfg: RLConfig
    model: Any
    tokenizer: Any
    learner: Learner | DistributedLearner
    tracker: OnlineTracker
    buffer: RolloutBuffer
    history: list[dict] = field(default_factory=list)

    def load(self, ckpt: Path, start_step: int) -> None:
        """Resume from the previous segment's checkpoint (its weights are already in the model)."""
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        self.learner.load_state_dict(state)
        self.tracker.load_state_dict(json.loads((ckpt / "tracker.json").read_text()))
        self.history = read_history(ckpt)
        if state["step"] != start_step:
            raise ValueError(f"checkpoint is at step {state['step']}, segment starts at {start_step}")
        if (ckpt / "partial_buffer.json").exists():
            self.buffer.load_state_dict(json.loads((ckpt / "partial_buffer.json").read_text()))

    def save(self, out_dir: Path, end_step: int) -> None:
        """Write the checkpoint; the model becomes the merged one for a LoRA policy."""
        self.model = save_policy(self.model, self.tokenizer, out_dir, self.cfg.lora is not None)
        torch.save({**self.learner.state_dict(), "step": end_step}, out_dir / "trainer_state.pt")
        (out_dir / "tracker.json").write_text(json.dumps(self.tracker.state_dict()))
        (out_dir / "partial_buffer.json").write_text(json.dumps(self.buffer.state_dict()))
        write_history(out_dir, self.history)


def open_segment(cfg: RLConfig, base_model_dir: Path, init_checkpoint: Path | None, difficulty: list | None,
                 start_step: int, device: str, dtype: torch.dtype) -> SegmentState:
    """The policy, its learner (with the frozen reference policy when there is a KL term) and the
    tracker, resumed from ``init_checkpoint`` when given. ``learner.world_size > 1``: the learner's
    ranks are Ray actors (the caller runs in a ``segment_ray`` session and closes the learner)."""
    model = build_policy(cfg, base_model_dir, init_checkpoint, device, dtype)
    tok = load_tokenizer(base_model_dir)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    learner: Learner | DistributedLearner = (
        Learner(cfg, model) if cfg.learner.world_size == 1
        else DistributedLearner(cfg, model, base_model_dir, device, dtype))
    state = SegmentState(cfg, model, tok, learner, make_tracker(difficulty, cfg.tracker_decay),
                         RolloutBuffer(cfg.partial.max_buffer))
    try:
        if init_checkpoint:
            state.load(init_checkpoint, start_step)
    except BaseException:
        close_learner(state.learner)
        raise
    if isinstance(state.learner, Learner):
        state.learner.ref_model = reference_policy(cfg, base_model_dir, device, dtype)
    return state


def close_learner(learner: Learner | DistributedLearner) -> None:
    if isinstance(learner, DistributedLearner):
        learner.close()


def segment_ray(cfg: RLConfig) -> contextlib.AbstractContextManager[None]:
    """The Ray session of a segment with rollout workers or a multi-process learner (else none)."""
    if cfg.rollout_workers == 1 and cfg.learner.world_size == 1:
        return contextlib.nullcontext()
    from components.rl.workers import ray_session

    return ray_session(max(cfg.rollout_workers, cfg.learner.world_size))


def rl_step(state: SegmentState, collector: Collector, engine: Any, step: int, rollout_dir: Path) -> dict[str, float]:
    """One step: collect rollouts, write them, update the policy; returns the step's metrics."""
    t0 = time.perf_counter()
    batch = collector.collect(step)
    pad = state.tokenizer.pad_token_id if state.tokenizer.pad_token_id is not None else 0
    tb = train_batch(batch, advantages(batch, state.cfg), pad)
    write_rollouts(rollout_dir / f"step-{step:05d}.parquet", step, batch.groups, batch.rewards, engine.policy_version)
    upd = state.learner.update(tb, [len(g.samples) for g in batch.groups], engine, step)
    m = step_metrics(batch, tb, upd, state.tracker, collector.scorer.error_count, engine.policy_version,
                     state.cfg.epochs, t0)
    engine.policy_version = step + 1
    return m


def _run_steps(state: SegmentState, collector: Collector, engine: Any, start_step: int, end_step: int,
               rollout_dir: Path, base_model_dir: Path, engine_dir: Path, log_metrics: MetricsFn | None,
               progress: ProgressFn | None) -> None:
    for step in range(start_step, end_step):
        m = rl_step(state, collector, engine, step, rollout_dir)
        if step + 1 < end_step:  # the segment's engine stops after its last step
            m.update(sync_weights(engine, state.model, step + 1, base_model_dir, engine_dir))
        m["lr"] = state.learner.scheduler_step()
        m["peak_rss_mb"] = peak_rss_mb()
        state.history.append({"step": step, **m})
        if log_metrics:
            log_metrics(m, step)
        if progress:
            progress(f"step {step + 1}/{state.cfg.steps} reward {m['reward_mean']:.3f}",
                     (step + 1 - start_step) / max(1, end_step - start_step))


def _log_last_rollouts(log_table: TableFn, rollout_dir: Path, last_step: int) -> None:
    import pyarrow.parquet as pq

    last = pq.read_table(rollout_dir / f"step-{last_step:05d}.parquet").to_pylist()
    log_table(last[:64], f"rollouts/step-{last_step:05d}.json")


TRANSCRIPTS_PER_SEGMENT = 4


def write_transcripts(rollout_dir: Path, out_dir: Path, last_step: int) -> Path | None:
    """A few readable transcripts (markdown) of the segment's last step; None without episodes."""
    import pyarrow.parquet as pq

    text = transcripts_markdown(pq.read_table(rollout_dir / f"step-{last_step:05d}.parquet").to_pylist(),
                                TRANSCRIPTS_PER_SEGMENT)
    if not text:
        return None
    path = out_dir / "transcripts" / f"step-{last_step:05d}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _train(state: SegmentState, rows: list[dict], weights: list[float] | None, start_step: int, end_step: int,
           out_dir: Path, base_model_dir: Path, dtype: torch.dtype,
           hooks: tuple[MetricsFn | None, ProgressFn | None, TableFn | None],
           engine_factory: EngineFactory | None, log_artifact: ArtifactFn | None = None) -> None:
    """The segment's steps with its rollout engine (closed at the end or on an error)."""
    cfg, (log_metrics, progress, log_table) = state.cfg, hooks
    sampler = PromptSampler(rows, weights, cfg.sampler, state.tracker, cfg.seed)
    rollout_dir = out_dir / "rollouts"
    rollout_dir.mkdir(parents=True, exist_ok=True)
    # Exported policy weights and server logs of a vLLM engine: scratch, never part of the checkpoint.
    engine_dir = Path(tempfile.mkdtemp(prefix="posttrain-rollout-engine-"))
    try:
        engine = (engine_factory or start_engine)(cfg, state.model, state.tokenizer, base_model_dir, start_step,
                                                  dtype, engine_dir)
        try:
            collector = Collector(cfg, engine, sampler, RewardScorer(), state.tracker, state.buffer)
            _run_steps(state, collector, engine, start_step, end_step, rollout_dir, base_model_dir, engine_dir,
                       log_metrics, progress)
        finally:
            engine.close()
    finally:
        shutil.rmtree(engine_dir, ignore_errors=True)
    if log_table is not None and end_step > start_step:
        _log_last_rollouts(log_table, rollout_dir, end_step - 1)
    if cfg.environment is not None and end_step > start_step:
        transcripts = write_transcripts(rollout_dir, out_dir, end_step - 1)
        if transcripts is not None and log_artifact is not None:
            log_artifact(transcripts, "transcripts")


def run_segment(
    *,
    base_model_dir: Path,
    init_checkpoint: Path | None,
    rows: list[dict],
    weights: list[float] | None,
    difficulty: list | None,
    cfg: RLConfig,
    start_step: int,
    end_step: int,
    out_dir: Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    log_metrics: MetricsFn | None = None,
    progress: ProgressFn | None = None,
    log_table: TableFn | None = None,
    engine_factory: EngineFactory | None = None,
    log_artifact: ArtifactFn | None = None,
) -> dict[str, float]:
    """Run steps ``[start_step, end_step)`` and write a checkpoint to ``out_dir``; returns the last
    step's figures and ``update_sparsity``.

    ``rows``/``weights``: the training prompts and their selection weights; ``difficulty``: the
    offline estimate's records (the tracker's start). ``log_table`` receives a sample of the
    segment's last rollouts (a table in MLflow); with ``cfg.environment``, a few transcripts of the
    last step are written to ``transcripts/`` and given to ``log_artifact`` (MLflow's ``transcripts/``). ``engine_factory`` (default
    ``rollout_engine.start_engine``, same arguments) makes the rollout engine; the segment closes it
    at its end or on an error, which stops a vLLM server."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    with segment_ray(cfg):
        state = open_segment(cfg, base_model_dir, init_checkpoint, difficulty, start_step, device, dtype)
        try:
            _train(state, rows, weights, start_step, end_step, out_dir, base_model_dir, dtype,
                   (log_metrics, progress, log_table), engine_factory, log_artifact)
            state.save(out_dir, end_step)
        finally:
            close_learner(state.learner)
    summary: dict[str, float] = {}
    if state.history:
        summary = {k: v for k, v in state.history[-1].items() if isinstance(v, (int, float))}
    summary["update_sparsity"] = update_sparsity(state.model, base_model_dir, device, dtype)
    return summary
