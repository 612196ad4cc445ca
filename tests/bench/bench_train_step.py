"""Benchmark: one RL update of 64 rollouts, prefix-shared forward/backward against the plain path.

The rollouts are ``--prompts`` chat prompts (the bench_engine prompts) × ``--samples`` responses.
Responses are sampled by posttrain's engine (``--new-tokens`` tokens at T = 1) unless
``--synthetic``, which draws random tokens with lengths uniform in [new_tokens/2, new_tokens]
(the update's cost depends on lengths, not on which tokens). Both paths run the trainer's own
update (``components.rl.learner.Learner.update``: micro-batches, DAPO loss, backward, clipping, AdamW)
from the same weights, alternately ``--repeats`` times in one process; the figure is the ratio of
the median wall times. Each repeat times a fresh learner's first update (``cold``: the gradient
and optimiser-state buffers are allocated then, the same cost on both paths) and then its second
update on the same rollouts (``warm``: what every later step of an RL run costs). The log-probs
of the two paths on the first micro-batch are compared too.

    python tests/bench/bench_train_step.py --model /work/smollm2 [--out tests/bench/results/train_step.json]
"""

from __future__ import annotations

import argparse
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

from components.engines.base import SamplingParams  # noqa: E402
from components.engines.transformers_engine import engine_for  # noqa: E402
from components.models import load_model, load_tokenizer  # noqa: E402
from components.rl.batch import TrainBatch, build_batch, response_logprobs  # noqa: E402
from components.rl.config import RLConfig  # noqa: E402
from components.rl.learner import Learner  # noqa: E402
from tests.bench.bench_engine import bench_model_dir, prompts_for  # noqa: E402


def rollouts(model, tok, args) -> TrainBatch:
    engine = engine_for(model, tok, "rl")
    prompts = prompts_for(args.prompts)
    gen = torch.Generator().manual_seed(0)
    if args.synthetic:
        pids = engine.encode_prompts(prompts)
        lo = max(1, args.new_tokens // 2)
        resp = [torch.randint(0, model.config.vocab_size, (int(torch.randint(lo, args.new_tokens + 1, (1,), generator=gen)),),
                              generator=gen).tolist() for _ in range(args.prompts * args.samples)]
        lps = [[-1.0] * len(r) for r in resp]
    else:
        out = engine.generate(prompts, args.samples, SamplingParams(max_new_tokens=args.new_tokens, seed=0))
        pids = out.prompt_token_ids
        resp = [s.token_ids for g in out.groups for s in g]
        lps = [s.logprobs for g in out.groups for s in g]
    prompts_rep = [p for p in pids for _ in range(args.samples)]
    adv = torch.randn(len(resp), generator=gen).tolist()
    return build_batch(prompts_rep, resp, lps, [[0] * len(r) for r in resp], adv, tok.pad_token_id or 0)


def one_update(model_dir: Path, tb: TrainBatch, cfg: RLConfig, sizes: list[int]) -> float:
    return updates(model_dir, tb, cfg, sizes, 1)[0]


def updates(model_dir: Path, tb: TrainBatch, cfg: RLConfig, sizes: list[int], n: int) -> list[float]:
    """Seconds of a fresh learner's first ``n`` updates on ``tb``."""
    learner = Learner(cfg, load_model(model_dir))
    out = []
    for step in range(n):
        t0 = time.perf_counter()
        learner.update(tb, sizes, None, step=step)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: a tiny random model)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = bench_model_dir(args.model)
    load_before = os.getloadavg()
    tok = load_tokenizer(model_dir)
    tb = rollouts(load_model(model_dir).eval(), tok, args)
    n = len(tb)
    sizes = [args.samples] * args.prompts
    cfgs = {share: RLConfig(minibatch_size=n, micro_batch_size=args.micro_batch, lr=2e-6, share_prompts=share,
                            loss={"variant": "dapo", "clip_low": 0.2, "clip_high": 0.28})
            for share in (True, False)}
    model = load_model(model_dir)
    first = tb.select(list(range(args.micro_batch)))
    with torch.no_grad():
        diff = (response_logprobs(model, first, share_prompts=True)[0]
                - response_logprobs(model, first, share_prompts=False)[0]).abs().max()
    times: dict[str, list[float]] = {"shared": [], "plain": [], "shared_warm": [], "plain_warm": []}
    for r in range(args.repeats):
        for arm, share in (("shared", True), ("plain", False)):
            cold, warm = updates(model_dir, tb, cfgs[share], sizes, 2)
            times[arm].append(cold)
            times[f"{arm}_warm"].append(warm)
        print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"model": str(model_dir), "threads": torch.get_num_threads(), "rollouts": n,
              "response_tokens": int(tb.resp_mask.sum()), "prompt_tokens": int(tb.prompt_lens.sum()),
              "synthetic": args.synthetic, "seconds": times, "median_seconds": med,
              "speedup": med["plain"] / med["shared"], "speedup_warm": med["plain_warm"] / med["shared_warm"],
              "max_abs_logprob_diff": float(diff),
              "load_average_before": load_before, "load_average_after": os.getloadavg()}
    print(json.dumps({k: result[k] for k in ("median_seconds", "speedup", "speedup_warm", "max_abs_logprob_diff",
                                              "load_average_before", "load_average_after")}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
