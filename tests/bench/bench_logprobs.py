"""Benchmark: naive (full logits) vs chunked (and Triton on CUDA) token log-prob + entropy.

Forward + backward of ``sum(a * logp + b * entropy)`` w.r.t. hidden and weight at SmolLM2
shapes. Each variant runs in a fresh subprocess so its peak memory is its own: on CPU the
peak RSS increase over the post-setup baseline (``ru_maxrss``), on CUDA
``torch.cuda.max_memory_allocated`` over the baseline. Prints a markdown table and writes
JSON (``--out``).

    python tests/bench/bench_logprobs.py [--tokens 8192 --vocab 49152 --hidden 576]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "tests" / "bench" / "results" / "logprobs.json"


def _worker(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from kernels.logprobs import token_logprobs

    torch.manual_seed(0)
    dev = torch.device(args.device)
    n, v, hdim = args.tokens, args.vocab, args.hidden
    hidden = torch.randn(n, hdim, device=dev).requires_grad_()
    # Embedding-scale weights give logits of a few units, like a real LM head.
    weight = (torch.randn(v, hdim, device=dev) * 0.05).requires_grad_()
    targets = torch.randint(0, v, (n,), device=dev)
    a, b = torch.randn(n, device=dev), torch.randn(n, device=dev)
    impl = "reference" if args.worker == "naive" else args.worker

    def step(k: int) -> None:
        logp, ent = token_logprobs(hidden[:k], weight, targets[:k], args.temperature, args.chunk_size, impl=impl)
        (a[:k] * logp + b[:k] * ent).sum().backward()
        hidden.grad = weight.grad = None

    step(min(n, 16))  # load BLAS / compile kernels outside the measurement
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times, cpu_times = [], []
    for _ in range(args.reps):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step(n)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        times.append(time.perf_counter() - t0)
        # CPU seconds (all threads): less disturbed than wall time when other jobs share the cores.
        cpu_times.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"variant": args.worker, "chunk_size": args.chunk_size if impl != "reference" else None,
            "times_s": times, "time_s": min(times), "cpu_times_s": cpu_times, "peak_bytes": peak}


def _run_variant(args: argparse.Namespace, variant: str, chunk_size: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--tokens", str(args.tokens), "--vocab", str(args.vocab),
           "--hidden", str(args.hidden), "--reps", str(args.reps), "--device", args.device,
           "--temperature", str(args.temperature), "--chunk-size", str(chunk_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {variant} chunk={chunk_size}: {res['times_s']} s", file=sys.stderr, flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[512], help="512 measured best on 2 CPU cores")
    p.add_argument("--chunk-size", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--reps", type=int, default=1, help="timed steps per subprocess")
    p.add_argument("--rounds", type=int, default=2, help="subprocesses per variant, interleaved (shared CPUs are noisy)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return

    variants = [("naive", 0)] + [("chunked", c) for c in args.chunk_sizes]
    if args.device.startswith("cuda"):
        variants += [("triton", c) for c in args.chunk_sizes]
    runs: dict[tuple[str, int], list[dict]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for name, c in variants:
            runs[(name, c)].append(_run_variant(args, name, c))
    rows = []
    for rs in runs.values():
        times = [t for r in rs for t in r["times_s"]]
        cpu = [t for r in rs for t in r["cpu_times_s"]]
        rows.append({**rs[0], "times_s": times, "time_s": min(times), "cpu_times_s": cpu, "cpu_s": min(cpu),
                     "peak_bytes": max(r["peak_bytes"] for r in rs)})
    naive = rows[0]
    for r in rows:
        r["time_ratio_vs_naive"] = r["time_s"] / naive["time_s"]
        r["cpu_ratio_vs_naive"] = r["cpu_s"] / naive["cpu_s"]
        r["memory_reduction_vs_naive"] = naive["peak_bytes"] / max(r["peak_bytes"], 1)

    print(f"tokens={args.tokens} vocab={args.vocab} hidden={args.hidden} device={args.device} "
          f"cpus={os.cpu_count()} rounds={args.rounds} reps={args.reps} (fwd+bwd; min times, max peak)\n")
    print("| variant | chunk | wall s | cpu s | peak MiB | wall / naive | cpu / naive | naive mem / mem |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['chunk_size'] or '-'} | {r['time_s']:.2f} | {r['cpu_s']:.2f} "
              f"| {r['peak_bytes'] / 2**20:.0f} | {r['time_ratio_vs_naive']:.2f} | {r['cpu_ratio_vs_naive']:.2f} "
              f"| {r['memory_reduction_vs_naive']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: getattr(args, k) for k in ("tokens", "vocab", "hidden", "temperature", "reps", "rounds", "device")}
    args.out.write_text(json.dumps({"config": meta, "results": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
