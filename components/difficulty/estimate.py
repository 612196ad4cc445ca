"""Per-prompt pass-rate estimation with optional sequential (early-stopping) sampling.

Sampling is injected: `sample_fn(indices, n, round_index)` returns n rewards in [0, 1] for each
requested prompt index, so this module knows nothing about engines. Sequential mode samples in
rounds and stops a prompt once (a) it has at least `min_samples` samples and (b) its equal-tailed
credible interval lies wholly inside one bucket; every prompt stops at `max_samples`. All active
prompts have the same sample count, so each round requests the same n for all of them.

Note on the defaults: with a Beta(1, 1) prior and level 0.9, k straight successes give
lo = 0.05 ** (1 / (k + 1)), which reaches the "solved" threshold 0.95 only for k >= 58; within
16 samples early stops therefore come mostly from the wide "learnable" bucket.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.difficulty.buckets import BUCKETS, BucketConfig, assign_bucket, bucket_of_interval
from components.difficulty.posterior import BetaPrior, beta_interval

SampleFn = Callable[[list[int], int, int], list[list[float]]]
ProgressFn = Callable[[dict[str, int]], None]

_META_KEY = b"posttrain.difficulty"


class EstimateConfig(BaseModel):
    """How to estimate pass rates. Sampling fields are carried for the caller and the cache key."""

    model_config = ConfigDict(extra="forbid")

    prior: BetaPrior = Field(default_factory=BetaPrior, description="Beta prior of every prompt's pass rate")
    level: float = Field(0.9, gt=0.0, lt=1.0, description="credible-interval level used to stop sampling a prompt")
    buckets: BucketConfig = Field(
        default_factory=BucketConfig, description="pass-rate thresholds of the difficulty buckets")
    sequential: bool = Field(True, description="stop sampling a prompt once its bucket is certain")
    samples_per_round: int = Field(4, ge=1, description="samples per prompt per round")
    min_samples: int = Field(4, ge=1, description="samples per prompt before stopping is allowed")
    max_samples: int = Field(16, ge=1, description="most samples per prompt")
    temperature: float = Field(1.0, ge=0.0, description="sampling temperature")
    max_new_tokens: int = Field(64, ge=1, description="generation length limit")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling")
    seed: int = Field(0, description="sampling seed")

    @model_validator(mode="after")
    def _sample_bounds(self) -> "EstimateConfig":
        if self.min_samples > self.max_samples:
            raise ValueError(
                f"min_samples ({self.min_samples}) must not exceed max_samples ({self.max_samples})"
            )
        return self


@dataclass(frozen=True)
class DifficultyRecord:
    """One prompt's estimate: evidence, Beta posterior, credible interval and bucket."""

    id: str
    successes: float
    trials: int
    alpha: float
    beta: float
    mean: float
    lo: float
    hi: float
    bucket: str
    stopped_early: bool


_ARROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("successes", pa.float64()),
        ("trials", pa.int64()),
        ("alpha", pa.float64()),
        ("beta", pa.float64()),
        ("mean", pa.float64()),
        ("lo", pa.float64()),
        ("hi", pa.float64()),
        ("bucket", pa.string()),
        ("stopped_early", pa.bool_()),
    ]
)


@dataclass
class EstimateResult:
    """All records plus the sampling cost, comparable with a fixed-k estimate of max_samples each."""

    records: list[DifficultyRecord]
    samples_used: int
    samples_fixed_k: int
    config: EstimateConfig = field(default_factory=EstimateConfig)

    @property
    def samples_saved(self) -> int:
        return self.samples_fixed_k - self.samples_used

    def summary(self) -> dict[str, float]:
        """Flat figures (MLflow-metric friendly): bucket counts, mean pass rate, sample cost."""
        counts = Counter(r.bucket for r in self.records)
        n = len(self.records)
        out: dict[str, float] = {"prompts": float(n)}
        for name in BUCKETS:
            out[f"count_{name}"] = float(counts.get(name, 0))
        out["mean_pass_rate"] = float(np.mean([r.mean for r in self.records])) if n else float("nan")
        out["stopped_early"] = float(sum(r.stopped_early for r in self.records))
        out["samples_used"] = float(self.samples_used)
        out["samples_fixed_k"] = float(self.samples_fixed_k)
        out["samples_saved"] = float(self.samples_saved)
        out["saved_fraction"] = (
            self.samples_saved / self.samples_fixed_k if self.samples_fixed_k else 0.0
        )
        return out

    def to_parquet(self, path: str | Path) -> Path:
        """One row per prompt; config and sample totals go into the file's schema metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = {f.name: [getattr(r, f.name) for r in self.records] for f in fields(DifficultyRecord)}
        meta = {
            "config": self.config.model_dump(mode="json"),
            "samples_used": self.samples_used,
            "samples_fixed_k": self.samples_fixed_k,
        }
        schema = _ARROW_SCHEMA.with_metadata({_META_KEY: json.dumps(meta).encode()})
        pq.write_table(pa.Table.from_pydict(columns, schema=schema), path)
        return path

    @classmethod
    def read_parquet(cls, path: str | Path) -> "EstimateResult":
        table = pq.read_table(Path(path))
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise ValueError(f"{path} is not a difficulty estimate (no {_META_KEY.decode()} metadata)")
        meta = json.loads(raw)
        rows = table.to_pylist()
        records = [DifficultyRecord(**row) for row in rows]
        return cls(
            records=records,
            samples_used=int(meta["samples_used"]),
            samples_fixed_k=int(meta["samples_fixed_k"]),
            config=EstimateConfig.model_validate(meta["config"]),
        )


def read_parquet(path: str | Path) -> EstimateResult:
    """Load an estimate written by `EstimateResult.to_parquet`."""
    return EstimateResult.read_parquet(path)


def _check_rewards(
    rewards: list[list[float]], indices: list[int], n: int, prompt_ids: Sequence[str]
) -> np.ndarray:
    if len(rewards) != len(indices):
        raise ValueError(f"sample_fn returned {len(rewards)} reward lists for {len(indices)} prompts")
    for idx, row in zip(indices, rewards):
        if len(row) != n:
            raise ValueError(
                f"sample_fn returned {len(row)} rewards for prompt {prompt_ids[idx]!r}, expected {n}"
            )
    arr = np.asarray(rewards, dtype=float).reshape(len(indices), n)
    bad = ~((arr >= 0.0) & (arr <= 1.0))  # also catches NaN
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        pid = prompt_ids[indices[row]]
        raise ValueError(f"rewards must lie in [0, 1]; prompt {pid!r} got {rewards[row]}")
    return arr


def estimate_difficulty(
    prompt_ids: list[str],
    sample_fn: SampleFn,
    cfg: EstimateConfig | None = None,
    progress: ProgressFn | None = None,
) -> EstimateResult:
    """Estimate every prompt's pass rate; `progress` gets a dict of counts after each round."""
    cfg = cfg or EstimateConfig()
    if len(set(prompt_ids)) != len(prompt_ids):
        raise ValueError("prompt_ids must be unique")
    n_prompts = len(prompt_ids)
    successes = np.zeros(n_prompts)
    trials = np.zeros(n_prompts, dtype=np.int64)
    stopped_bucket: list[str | None] = [None] * n_prompts
    active = list(range(n_prompts))
    round_index = 0
    while active:
        done = int(trials[active[0]])  # all active prompts share one sample count
        n = min(cfg.samples_per_round, cfg.max_samples - done)
        rewards = _check_rewards(sample_fn(list(active), n, round_index), active, n, prompt_ids)
        idx = np.asarray(active)
        successes[idx] += rewards.sum(axis=1)
        trials[idx] += n
        still: list[int] = []
        if done + n < cfg.max_samples:
            if cfg.sequential and done + n >= cfg.min_samples:
                a = cfg.prior.alpha + successes[idx]
                b = cfg.prior.beta + trials[idx] - successes[idx]
                lo, hi = beta_interval(a, b, cfg.level)
                for j, i in enumerate(active):
                    bucket = bucket_of_interval(float(lo[j]), float(hi[j]), cfg.buckets)
                    if bucket is None:
                        still.append(i)
                    else:
                        stopped_bucket[i] = bucket
            else:
                still = list(active)
        active = still
        if progress is not None:
            progress(
                {
                    "round": round_index,
                    "active": len(active),
                    "finished": n_prompts - len(active),
                    "samples_used": int(trials.sum()),
                }
            )
        round_index += 1

    alpha = cfg.prior.alpha + successes
    beta = cfg.prior.beta + trials - successes
    lo, hi = beta_interval(alpha, beta, cfg.level) if n_prompts else (np.zeros(0), np.zeros(0))
    records = []
    for i, pid in enumerate(prompt_ids):
        mean = float(alpha[i] / (alpha[i] + beta[i]))
        # A stopped prompt keeps the bucket its interval confirmed; otherwise the mean decides
        # (the mean can fall outside the interval only for extreme, very small priors).
        bucket = stopped_bucket[i] or assign_bucket(mean, cfg.buckets)
        records.append(
            DifficultyRecord(
                id=pid,
                successes=float(successes[i]),
                trials=int(trials[i]),
                alpha=float(alpha[i]),
                beta=float(beta[i]),
                mean=mean,
                lo=float(lo[i]),
                hi=float(hi[i]),
                bucket=bucket,
                stopped_early=bool(trials[i] < cfg.max_samples),
            )
        )
    return EstimateResult(
        records=records,
        samples_used=int(trials.sum()),
        samples_fixed_k=n_prompts * cfg.max_samples,
        config=cfg,
    )


@dataclass
class FixedKComparison:
    """Sequential vs fixed-k estimates of the same prompts (benchmarks and tests only)."""

    agreement: float  # share of prompts whose sequential bucket equals the fixed-k bucket
    samples_sequential: int
    samples_fixed_k: int
    samples_saved: int
    truth_agreement_sequential: float | None  # share matching the bucket of the true p
    truth_agreement_fixed_k: float | None
    sequential: EstimateResult
    fixed_k: EstimateResult

    def figures(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("sequential")
        out.pop("fixed_k")
        return out


def compare_to_fixed_k(
    prompt_ids: list[str],
    make_sample_fn: Callable[[], SampleFn],
    cfg: EstimateConfig | None = None,
    true_p: Sequence[float] | None = None,
) -> FixedKComparison:
    """Run the sequential and the fixed-k estimator, each with a fresh reward source.

    Agreement with fixed-k cannot be measured during a real run without extra samples, so this
    needs a reward source that can be replayed (a scripted one, ideally one stream per prompt so
    the sequential samples are a prefix of the fixed-k ones). With `true_p` it also reports how
    often each estimator lands in the bucket of the true pass rate.
    """
    cfg = cfg or EstimateConfig()
    seq_cfg = cfg.model_copy(update={"sequential": True})
    fixed_cfg = cfg.model_copy(update={"sequential": False})
    seq = estimate_difficulty(prompt_ids, make_sample_fn(), seq_cfg)
    fixed = estimate_difficulty(prompt_ids, make_sample_fn(), fixed_cfg)
    n = len(prompt_ids)

    def share(matches: int) -> float:
        return matches / n if n else 1.0

    agreement = share(sum(a.bucket == b.bucket for a, b in zip(seq.records, fixed.records)))
    truth_seq = truth_fixed = None
    if true_p is not None:
        if len(true_p) != n:
            raise ValueError(f"true_p has {len(true_p)} entries for {n} prompts")
        truth = [assign_bucket(float(p), cfg.buckets) for p in true_p]
        truth_seq = share(sum(r.bucket == t for r, t in zip(seq.records, truth)))
        truth_fixed = share(sum(r.bucket == t for r, t in zip(fixed.records, truth)))
    return FixedKComparison(
        agreement=agreement,
        samples_sequential=seq.samples_used,
        samples_fixed_k=fixed.samples_used,
        samples_saved=fixed.samples_used - seq.samples_used,
        truth_agreement_sequential=truth_seq,
        truth_agreement_fixed_k=truth_fixed,
        sequential=seq,
        fixed_k=fixed,
    )
