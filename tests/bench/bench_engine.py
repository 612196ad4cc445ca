"""Benchmark: posttrain's transformers engine against HF ``model.generate``, same run.

Same model, prompts, threads and sampling settings (T = 1, no top-k/top-p, ``--new-tokens``
new tokens, EOS ends a row): ``--prompts`` chat prompts × ``--samples`` samples each, i.e. the
RL workload (one prompt shared by its group). ``generate`` gets the prompts repeated
``--samples`` times, left-padded. Useful tokens are the tokens a row produced up to and
including its EOS (what a rollout keeps); tokens/s is useful tokens over wall time. The two are
timed alternately ``--repeats`` times after a short warm-up of each; the ratio of the medians is
the figure. The load average is recorded before and after, since the machine may be shared.
``--batch-sweep`` also times the evaluation workload (distinct prompts, greedy) at several
engine batch sizes.

``engine_mkl`` is the same engine with its linear layers left on MKL (``POSTTRAIN_ONEDNN_LINEAR=0``,
see ``kernels/cpu_linear.py``), timed in the same alternation, so the oneDNN share of the figure
is measured rather than assumed.

``decode_floor`` times the model's own forward, one token per row at the full batch,
``--new-tokens`` times over a KV cache prefilled beforehand (untimed), with no prefill, sampling
or bookkeeping: ``mkl`` with ``F.linear`` as ``generate`` runs it, ``onednn`` with the linear
layers through oneDNN, weights packed, as the engine runs them. ``generate``'s time over the ``mkl`` floor bounds
the speed-up an engine can reach with ``generate``'s own arithmetic; scaled by the useful
fraction of tokens it allows for rows that finish early and are dropped.

    python tests/bench/bench_engine.py --model /work/smollm2 [--out tests/bench/results/engine.json]
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
from unittest import mock

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see README, Settings)

import torch  # noqa: E402

from components.engines.base import SamplingParams  # noqa: E402
from components.engines.transformers_engine import TransformersEngine  # noqa: E402
from components.models import build_tiny_model, load_model, load_tokenizer  # noqa: E402

SYSTEM = "Give only the final number."


def prompts_for(k: int, offset: int = 0) -> list[list[dict[str, str]]]:
    ops = ["+", "*", "-"]
    return [[{"role": "system", "content": SYSTEM},
             {"role": "user", "content": f"What is {(i + offset) % 9 + 1} {ops[(i + offset) % 3]} {(3 * i + offset) % 9 + 1}?"}]
            for i in range(k)]


def bench_model_dir(model: Path | None) -> Path:
    """``--model``, or a tiny random model built once in $TMPDIR."""
    if model is not None:
        return model
    model_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "posttrain-bench-tiny"
    build_tiny_model(model_dir, hidden_size=64, num_layers=2, seed=0)
    return model_dir


def useful_tokens(rows: list[list[int]], eos: set[int]) -> int:
    return sum(next((k + 1 for k, t in enumerate(r) if t in eos), len(r)) for r in rows)


def hf_generate(engine: TransformersEngine, prompt_ids: list[list[int]], n: int, new_tokens: int, seed: int) -> int:
    """``model.generate`` on the prompts repeated n times; returns useful tokens."""
    rows = [p for p in prompt_ids for _ in range(n)]
    pad = engine.tokenizer.pad_token_id
    width = max(len(p) for p in rows)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in rows])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = engine.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                    top_p=1.0, max_new_tokens=new_tokens, pad_token_id=pad,
                                    eos_token_id=sorted(engine.eos_ids))
    return useful_tokens(out[:, width:].tolist(), engine.eos_ids)


def ours(engine: TransformersEngine, prompts, n: int, new_tokens: int, seed: int, temperature: float = 1.0) -> int:
    batch = engine.generate(prompts, n, SamplingParams(temperature=temperature, max_new_tokens=new_tokens, seed=seed))
    return batch.generated_tokens


def timed(fn, *args) -> tuple[float, int]:
    t0 = time.perf_counter()
    toks = fn(*args)
    return time.perf_counter() - t0, toks


def ours_mkl(engine: TransformersEngine, prompts, n: int, new_tokens: int, seed: int) -> int:
    """The engine with its linear layers on MKL (``F.linear``), as before ``kernels.cpu_linear``."""
    with mock.patch.dict(os.environ, {"POSTTRAIN_ONEDNN_LINEAR": "0"}):
        return ours(engine, prompts, n, new_tokens, seed)


def compare(engine: TransformersEngine, args) -> dict:
    prompts = prompts_for(args.prompts)
    pids = engine.encode_prompts(prompts)
    n, t = args.samples, args.new_tokens
    ours(engine, prompts, n, 2, 0)
    hf_generate(engine, pids, n, 2, 0)
    runs: dict[str, list[dict]] = {"engine": [], "engine_mkl": [], "generate": []}
    for r in range(args.repeats):
        for name, fn, first in (("engine", ours, prompts), ("engine_mkl", ours_mkl, prompts),
                                ("generate", hf_generate, pids)):
            s, k = timed(fn, engine, first, n, t, 100 + r)
            runs[name].append({"seconds": s, "useful_tokens": k, "tokens_per_s": k / s})
        print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]['tokens_per_s']:.1f} tok/s" for k, v in runs.items()), flush=True)
    med = {k: statistics.median(x["tokens_per_s"] for x in v) for k, v in runs.items()}
    return {"runs": runs, "median_tokens_per_s": med, "speedup": med["engine"] / med["generate"],
            "speedup_engine_mkl": med["engine_mkl"] / med["generate"]}


def decode_floor(engine: TransformersEngine, args) -> dict:
    """Seconds of ``--new-tokens`` bare decode forwards at the full batch (see the module docstring)."""
    rows = [p for p in engine.encode_prompts(prompts_for(args.prompts)) for _ in range(args.samples)]
    pad = engine.tokenizer.pad_token_id
    width = max(len(p) for p in rows)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in rows])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows])
    times: dict[str, list[float]] = {"mkl": [], "onednn": []}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for kind in times:
                with engine.fast_linears(len(rows)) if kind == "onednn" else contextlib.nullcontext():
                    out = engine.model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
                    cache, tok, m = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True), mask
                    t0 = time.perf_counter()
                    for _ in range(args.new_tokens):
                        m = torch.cat([m, torch.ones_like(tok)], dim=1)
                        out = engine.model(input_ids=tok, attention_mask=m, past_key_values=cache, use_cache=True)
                        tok = out.logits[:, -1].argmax(-1, keepdim=True)
                    times[kind].append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times["mkl"]), "runs": times["mkl"],
            "onednn_seconds": statistics.median(times["onednn"]), "onednn_runs": times["onednn"]}


def batch_sweep(engine: TransformersEngine, args) -> dict:
    """Evaluation-like workload: distinct prompts, greedy, at each engine batch size."""
    prompts = prompts_for(args.sweep_prompts, offset=1)
    out = {}
    for b in args.batch_sizes:
        engine.max_batch_sequences = b
        s, k = timed(ours, engine, prompts, 1, args.new_tokens, 0, 0.0)
        out[str(b)] = {"seconds": s, "tokens": k, "tokens_per_s": k / s}
        print(f"greedy, {len(prompts)} distinct prompts, batch {b}: {k / s:.1f} tok/s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: a tiny random model)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--batch-sweep", action="store_true")
    ap.add_argument("--sweep-prompts", type=int, default=128)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = bench_model_dir(args.model)
    engine = TransformersEngine(load_model(model_dir).eval(), load_tokenizer(model_dir),
                                max_batch_sequences=args.prompts * args.samples)
    load_before = os.getloadavg()
    result = {"model": str(model_dir), "threads": torch.get_num_threads(), "dtype": "float32",
              "batch": args.prompts * args.samples, "prompts": args.prompts, "samples": args.samples,
              "new_tokens": args.new_tokens, "load_average_before": load_before}
    result.update(compare(engine, args))
    floor = decode_floor(engine, args)
    gen = result["runs"]["generate"]
    gen_s = statistics.median(r["seconds"] for r in gen)
    useful = statistics.median(r["useful_tokens"] for r in gen) / (result["batch"] * args.new_tokens)
    result["decode_floor"] = {**floor, "useful_fraction": useful, "max_speedup_full_batch": gen_s / floor["seconds"],
                              "max_speedup_rows_dropped": gen_s / (floor["seconds"] * useful)}
    if args.batch_sweep:
        result["batch_sweep_greedy"] = batch_sweep(engine, args)
    result["load_average_after"] = os.getloadavg()
    print(json.dumps({k: result[k] for k in ("median_tokens_per_s", "speedup", "speedup_engine_mkl", "decode_floor",
                                              "load_average_before",
                                              "load_average_after", "threads")}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
