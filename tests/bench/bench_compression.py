"""Time compression variants on a model directory (default: Wanda 2:4 and GPTQ W4 g64).

    python tests/bench/bench_compression.py --model DIR [--n 128 --seq 128 --batch 16]
        [--variants wanda-2:4,gptq-w4g64] [--layers K] [--out results.json]

Without ``--model`` it uses a converted SmolLM2 under ``.posttrain/`` if there is one, else a tiny
random Llama. Calibration data are synthetic arithmetic Q/A lines (like the pipeline's prompts),
tokenized and cut into ``--n`` sequences of ``--seq`` tokens; 16 more sequences give perplexity
before and after. ``--layers K`` keeps only the first K decoder layers (for a quick estimate on
the full model: time scales linearly with the layer count). Reference on 2 cores (llm-compressor
0.14, SmolLM2-135M): Wanda 2:4 397 s, GPTQ W4 g64 about 36 min.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from components.compression.apply import compress_model  # noqa: E402
from components.compression.config import parse_variant  # noqa: E402
from components.compression.export import perplexity  # noqa: E402


def find_model() -> Path:
    for cfg in sorted((ROOT / ".posttrain").glob("**/config.json")):
        data = json.loads(cfg.read_text())
        if data.get("hidden_size") == 576 and data.get("num_hidden_layers") == 30 and "quantization_config" not in data:
            return cfg.parent
    from components.models import build_tiny_model

    out = Path(tempfile.mkdtemp(prefix="bench-tiny-"))
    build_tiny_model(out, hidden_size=64, num_layers=2)
    print(f"no converted SmolLM2 under .posttrain/: using a tiny random model in {out}", file=sys.stderr)
    return out


def synthetic_batches(tok, n: int, seq: int, batch: int, seed: int) -> list[dict[str, torch.Tensor]]:
    rng = random.Random(seed)
    ops = [("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b)]
    ids: list[int] = []
    while len(ids) < n * seq:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        sym, fn = rng.choice(ops)
        ids += tok(f"Question: What is {a} {sym} {b}? Give only the final number.\nAnswer: {fn(a, b)}\n")["input_ids"]
    rows = torch.tensor(ids[: n * seq]).reshape(n, seq)
    return [
        {"input_ids": rows[i : i + batch], "attention_mask": torch.ones_like(rows[i : i + batch])}
        for i in range(0, n, batch)
    ]


def load(model_dir: Path, layers: int | None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if layers is not None:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--variants", default="wanda-2:4,gptq-w4g64")
    ap.add_argument("--n", type=int, default=128, help="calibration sequences")
    ap.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--layers", type=int, default=None, help="keep only the first K decoder layers")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    model_dir = args.model or find_model()
    tok = AutoTokenizer.from_pretrained(model_dir)
    calib = synthetic_batches(tok, args.n, args.seq, args.batch, seed=0)
    held = synthetic_batches(tok, 16, args.seq, 16, seed=1)
    results = []
    for spec in args.variants.split(","):
        model = load(model_dir, args.layers)
        ppl_before = perplexity(model, held)
        t0, c0 = time.perf_counter(), time.process_time()
        state = compress_model(
            model, parse_variant(spec), calib,
            progress=lambda msg, frac, spec=spec, t0=t0: print(f"  {spec}: {msg} {time.perf_counter() - t0:.1f}s",
                                                          file=sys.stderr),
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        cpu_seconds = time.process_time() - c0  # all threads; on a shared machine wall time lies
        row = {
            "variant": spec,
            "model": str(model_dir),
            "decoder_layers": len(model.model.layers),
            "calibration": f"{args.n}x{args.seq}",
            "threads": torch.get_num_threads(),
            "seconds": round(seconds, 1),
            "seconds_per_layer": round(seconds / len(model.model.layers), 2),
            "cpu_seconds": round(cpu_seconds, 1),
            "group_size": state.group_size,
            "sparsity": round(state.stats["sparsity"], 4),
            "avg_bits_targeted": state.stats["avg_bits_targeted"],
            "ppl_before": round(ppl_before, 3),
            "ppl_after": round(perplexity(model, held), 3),
        }
        print(json.dumps(row), flush=True)
        results.append(row)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
