"""Benchmark: multi-turn calculator episodes with a shared header against without, same run.

The ``tools`` recipe's workload: ``--prompts`` rows of its sources (arithmetic and word problems,
alternating) × ``--samples`` episodes each through the ``calculator_worked`` environment at
T = ``--temperature`` (its opening turns, the system prompt and two worked episodes, are a header
common to every prompt). Two parts, each timed alternately ``--repeats`` times in one process:

* engine: ``run_episodes`` with the header forwarded once for all rows (the engine's common-prefix
  prefill) against ``MIN_COMMON_PREFIX`` set out of reach (each distinct sequence forwarded whole);
  the episodes must be identical token for token, since sharing only changes float rounding;
* trainer: one ``Learner.update`` of those episodes (micro-batches of ``--micro-batch``, DAPO,
  AdamW) with the tree layout (header once, each prompt's suffix once, then its responses), with
  one packed row per prompt (header repeated), and with the plain path (one row per episode).

The load average is recorded before and after, since the machine may be shared.

    python tests/bench/bench_episodes.py --model /work/smollm2 [--out tests/bench/results/episodes.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see README, Settings)

import torch  # noqa: E402

from components.data.generators import generate_arithmetic  # noqa: E402
from components.data.word_problems import generate_word_problems  # noqa: E402
from components.engines import transformers_engine as te  # noqa: E402
from components.engines.base import SamplingParams  # noqa: E402
from components.environments.base import EnvironmentConfig, make_environment  # noqa: E402
from components.environments.episodes import run_episodes  # noqa: E402
from components.models import load_model, load_tokenizer  # noqa: E402
from components.recipe import load_recipe  # noqa: E402
from components.rl import batch as rl_batch  # noqa: E402
from components.rl.config import RLConfig  # noqa: E402
from tests.bench.bench_engine import bench_model_dir  # noqa: E402
from tests.bench.bench_train_step import one_update  # noqa: E402


def tool_rows(k: int) -> list[dict]:
    arith, words = (load_recipe("tools").curate.sources[i] for i in (0, 1))
    a, w = generate_arithmetic(arith), generate_word_problems(words)
    return [(a if i % 2 == 0 else w)[i // 2] for i in range(k)]


@contextlib.contextmanager
def header_shared(on: bool):
    """The engine's and the trainer's common-header threshold, or one no prompt reaches."""
    saved = te.MIN_COMMON_PREFIX, rl_batch.MIN_COMMON_PREFIX
    if not on:
        te.MIN_COMMON_PREFIX = rl_batch.MIN_COMMON_PREFIX = 10**9
    try:
        yield
    finally:
        te.MIN_COMMON_PREFIX, rl_batch.MIN_COMMON_PREFIX = saved


def episodes(model, tok, rows: list[dict], args):
    engine = te.engine_for(model, tok, "rl")
    cfg = EnvironmentConfig(max_turns=3, max_total_tokens=128, tool_timeout_s=2.0)
    flat = [r for r in rows for _ in range(args.samples)]
    envs = [make_environment("calculator_worked", cfg) for _ in flat]
    params = SamplingParams(temperature=args.temperature, max_new_tokens=args.new_tokens)
    return run_episodes(engine, envs, flat, params, torch.Generator().manual_seed(0))


def train_batch(eps, pad: int) -> rl_batch.TrainBatch:
    adv = torch.randn(len(eps), generator=torch.Generator().manual_seed(1)).tolist()
    return rl_batch.build_batch([e.prompt_ids for e in eps], [e.token_ids for e in eps], [e.logprobs for e in eps],
                                [[0] * len(e.token_ids) for e in eps], adv, pad, [e.loss_mask for e in eps])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_engine(model, tok, rows, args) -> tuple[dict, list]:
    times: dict[str, list[float]] = {"shared": [], "whole": []}
    outs = {}
    for r in range(args.repeats):
        for arm in times:
            with header_shared(arm == "shared"):
                dt, outs[arm] = timed(lambda: episodes(model, tok, rows, args))
            times[arm].append(dt)
        print(f"engine repeat {r}: shared {times['shared'][-1]:.1f} s, whole {times['whole'][-1]:.1f} s", flush=True)
    same = [e.token_ids for e in outs["shared"]] == [e.token_ids for e in outs["whole"]]
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds": times, "median_seconds": med, "speedup": med["whole"] / med["shared"],
            "identical_episodes": same, "model_tokens": sum(e.model_tokens for e in outs["shared"]),
            "tool_calls": sum(e.tool_calls for e in outs["shared"])}, outs["shared"]


def bench_trainer(model_dir: Path, tb, args) -> dict:
    sizes = [args.samples] * args.prompts
    arms = {"tree": (True, True), "per_prompt": (True, False), "plain": (False, True)}
    times: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(args.repeats):
        for arm, (share, header) in arms.items():
            cfg = RLConfig(minibatch_size=len(tb), micro_batch_size=args.micro_batch, lr=2e-6, share_prompts=share,
                           loss={"variant": "dapo", "clip_low": 0.2, "clip_high": 0.28})
            with header_shared(header):
                times[arm].append(one_update(model_dir, tb, cfg, sizes))
        print(f"trainer repeat {r}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds": times, "median_seconds": med, "speedup_vs_per_prompt": med["per_prompt"] / med["tree"],
            "speedup_vs_plain": med["plain"] / med["tree"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: a tiny random model)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = bench_model_dir(args.model)
    load_before = os.getloadavg()
    tok = load_tokenizer(model_dir)
    rows = tool_rows(args.prompts)
    engine, eps = bench_engine(load_model(model_dir).eval(), tok, rows, args)
    trainer = bench_trainer(model_dir, train_batch(eps, tok.pad_token_id or 0), args)
    result = {"model": str(model_dir), "threads": torch.get_num_threads(), "episodes": len(eps),
              "engine": engine, "trainer": trainer,
              "load_average_before": load_before, "load_average_after": os.getloadavg()}
    print(json.dumps({"engine_speedup": engine["speedup"], "identical_episodes": engine["identical_episodes"],
                      "trainer": {k: v for k, v in trainer.items() if k.startswith("speedup")},
                      "load_average_before": load_before, "load_average_after": result["load_average_after"]},
                     indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
