"""Benchmark: synchronous vs partial (APRIL) rollouts on a long-tail length mix, and engine
decode throughput by batch size.

Long tail, crafted with a logits hook on the model's last position (documented here, not
used anywhere else): two "loop" tokens L are chosen. When the current input token is not in
L, EOS gets a bias so about 15 % of the mass sits on EOS and about 1.5 % on L: most samples
stop after a handful of tokens. Once a sample emits an L token it is in the loop state: EOS
is forbidden and L is strongly favoured, so it runs to ``max_new_tokens``. Roughly one
sample in ten ends in the loop, so nearly every 64-row synchronous batch waits for a
full-length straggler while its other rows sit idle, which is the case partial rollouts target.

Both modes run the same number of steps, each asking for ``groups`` complete groups of
``group_size`` samples, on the same prompts and weights. Reported: generated tokens/s
(all sampled tokens, including ones left in the buffer for later), complete groups/s, and
partial/sync ratios. Then plain ``engine.generate`` decode tokens/s at batch 8/16/32/64 with
EOS suppressed (every row produces ``--decode-tokens`` tokens).

    python tests/bench/bench_rollouts.py [--model DIR] [--steps 6] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from components.engines.base import SamplingParams  # noqa: E402
from components.engines.transformers_engine import TransformersEngine  # noqa: E402
from components.models import build_tiny_model, load_model, load_tokenizer  # noqa: E402
from components.rl.partial import PartialRolloutConfig, RolloutBuffer, generate_with_partial  # noqa: E402


def long_tail_hook(model, eos_id: int, loop_ids: list[int], vocab: int):
    """Install the EOS/loop bias described in the module docstring; returns the hook handle."""
    # With near-uniform logits over V tokens: p(eos) = e^a / (e^a + V) ~ 0.15 -> e^a = 0.15/0.85 V,
    # p(L) = 2 e^b / (e^a + V) ~ 0.015 -> e^b = 0.0075 (e^a + V).
    ea = 0.15 / 0.85 * vocab
    a, b = math.log(ea), math.log(0.0075 * (ea + vocab))
    loop = torch.tensor(loop_ids)

    def hook(module, args, kwargs, out):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
        last = ids[:, -1]
        in_loop = torch.isin(last, loop.to(last.device))
        lg = out.logits[:, -1, :]
        short, looping = ~in_loop, in_loop
        lg[short, eos_id] += a
        lg[short.nonzero(), loop.to(lg.device)[None, :]] += b
        lg[looping, eos_id] = -1e9
        lg[looping.nonzero(), loop.to(lg.device)[None, :]] += 12.0
        return out

    return model.register_forward_hook(hook, with_kwargs=True)


def msgs(row: dict) -> list[dict[str, str]]:
    return [{"role": "user", "content": row["prompt"]}]


def run_sync(eng, rows, args) -> dict:
    toks = groups = 0
    lengths: list[int] = []
    t0 = time.perf_counter()
    for step in range(args.steps):
        chosen = [rows[(step * args.groups + i) % len(rows)] for i in range(args.groups)]
        p = SamplingParams(max_new_tokens=args.max_new_tokens, seed=1000 + step)
        batch = eng.generate([msgs(r) for r in chosen], args.group_size, p)
        toks += batch.generated_tokens
        groups += len(batch.groups)
        lengths += [s.num_tokens for g in batch.groups for s in g]
    dt = time.perf_counter() - t0
    return {"seconds": dt, "tokens": toks, "groups": groups, "tokens_per_s": toks / dt, "groups_per_s": groups / dt,
            "len_median": float(np.median(lengths)), "len_p90": float(np.percentile(lengths, 90)),
            "frac_at_max": float(np.mean([n >= args.max_new_tokens for n in lengths]))}


def run_partial(eng, rows, args) -> dict:
    cfg = PartialRolloutConfig(enabled=True, over_provision=args.over_provision, chunk_tokens=args.chunk_tokens,
                               max_buffer=args.max_buffer)
    buf = RolloutBuffer(cfg.max_buffer)
    toks = groups = 0
    stale: list[float] = []
    t0 = time.perf_counter()
    offset = 0
    for step in range(args.steps):
        want = math.ceil(args.groups * cfg.over_provision)
        cand = [rows[(offset + i) % len(rows)] for i in range(want)]
        p = SamplingParams(max_new_tokens=args.max_new_tokens, seed=1000 + step)
        out, st = generate_with_partial(eng, cand, args.group_size, p, args.groups, buf, step, msgs, cfg)
        offset += int(st["partial/new_groups"])
        toks += int(st["partial/tokens_generated"])
        groups += len(out)
        stale.append(st["partial/stale_token_frac"])
    dt = time.perf_counter() - t0
    return {"seconds": dt, "tokens": toks, "groups": groups, "tokens_per_s": toks / dt, "groups_per_s": groups / dt,
            "stale_token_frac_mean": float(np.mean(stale)), "buffered_samples_end": buf.num_samples}


def decode_throughput(eng, rows, args) -> list[dict]:
    saved, eng.eos_ids = eng.eos_ids, set()
    out = []
    for bs in (8, 16, 32, 64):
        eng.max_batch_sequences = bs
        p = SamplingParams(max_new_tokens=args.decode_tokens, seed=7)
        batch = eng.generate([msgs(r) for r in rows[:bs]], 1, p)
        out.append({"batch": bs, "tokens": batch.generated_tokens, "seconds": batch.seconds,
                    "tokens_per_s": batch.generated_tokens / batch.seconds})
    eng.eos_ids = saved
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: a tiny random model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--groups", type=int, default=8, help="complete groups per step")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--chunk-tokens", type=int, default=32)
    ap.add_argument("--over-provision", type=float, default=1.5)
    ap.add_argument("--max-buffer", type=int, default=256)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    ap.add_argument("--decode-only", action="store_true",
                    help="only the engine's decode throughput by batch size (for real models on CPU)")
    args = ap.parse_args()

    tmp = None
    model_dir = args.model
    if model_dir is None:
        tmp = tempfile.TemporaryDirectory()
        model_dir = Path(tmp.name)
        build_tiny_model(model_dir, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=128, seed=0)
    model = load_model(model_dir, args.device).eval()
    tok = load_tokenizer(model_dir)
    eng = TransformersEngine(model, tok, max_batch_sequences=64)
    eos = tok.eos_token_id
    vocab = model.config.vocab_size
    loop_ids = [i for i in (vocab // 2, vocab // 2 + 1) if i != eos]
    rows = [{"id": f"p{i}", "prompt": f"What is {i % 10} + {i // 10}?"} for i in range(100)]

    if args.decode_only:
        eng.generate([msgs(rows[0])], 2, SamplingParams(max_new_tokens=4, seed=0))  # warm-up
        dec = decode_throughput(eng, rows, args)
        print(f"model {args.model}  threads {torch.get_num_threads()}\n| batch | tokens | s | tokens/s |\n|---|---|---|---|")
        for d in dec:
            print(f"| {d['batch']} | {d['tokens']} | {d['seconds']:.2f} | {d['tokens_per_s']:.1f} |")
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"model": str(args.model), "decode": dec}, indent=2))
        return
    handle = long_tail_hook(model, eos, loop_ids, vocab)
    eng.generate([msgs(rows[0])], 2, SamplingParams(max_new_tokens=4, seed=0))  # warm-up
    sync = run_sync(eng, rows, args)
    part = run_partial(eng, rows, args)
    handle.remove()
    dec = decode_throughput(eng, rows, args)

    res = {"model": str(args.model or "tiny-random (hidden 64, 2 layers)"), "device": args.device,
           "threads": torch.get_num_threads(), "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "sync": sync, "partial": part,
           "ratio_tokens_per_s": part["tokens_per_s"] / sync["tokens_per_s"],
           "ratio_groups_per_s": part["groups_per_s"] / sync["groups_per_s"], "decode": dec}
    print(f"model {res['model']}  device {args.device}  threads {res['threads']}")
    print(f"long tail (sync samples): median len {sync['len_median']:.0f}, p90 {sync['len_p90']:.0f}, "
          f"{100 * sync['frac_at_max']:.1f}% hit max {args.max_new_tokens}")
    print("| mode | s | tokens | groups | tokens/s | groups/s |\n|---|---|---|---|---|---|")
    for name, r in (("sync", sync), ("partial", part)):
        print(f"| {name} | {r['seconds']:.2f} | {r['tokens']} | {r['groups']} | {r['tokens_per_s']:.0f} | {r['groups_per_s']:.2f} |")
    print(f"partial/sync: tokens/s x{res['ratio_tokens_per_s']:.2f}, groups/s x{res['ratio_groups_per_s']:.2f}; "
          f"stale token share {part['stale_token_frac_mean']:.3f}, buffer at end {part['buffered_samples_end']} samples")
    print("| batch | tokens | s | tokens/s |\n|---|---|---|---|")
    for d in dec:
        print(f"| {d['batch']} | {d['tokens']} | {d['seconds']:.2f} | {d['tokens_per_s']:.0f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
