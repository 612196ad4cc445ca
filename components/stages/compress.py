"""Stage 4: turn the RL checkpoint into one compressed variant (one cached task per variant).

Each variant folder holds a dense transformers checkpoint (``model/``: pruned zeros,
fake-quantized weights) that every engine loads, plus a compressed-tensors checkpoint
(``compressed/``) for vLLM when the variant quantizes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from components.artifacts import run_info_dir, split_measurements
from components.compression.apply import compress_model
from components.compression.export import export_compressed_tensors, export_dense, perplexity
from components.prompts import messages_for
from components.stages.curate import load_split


def calibration_batches(tok, rows: list[dict], n: int, seq_len: int, batch_size: int = 8) -> list[dict]:
    """Chat-formatted prompt + reference answer, as the policy sees them, truncated to seq_len."""
    texts = []
    for r in rows[:n]:
        ids = tok.apply_chat_template(messages_for(r) + [{"role": "assistant", "content": str(r["answer"])}],
                                      tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        texts.append(list(ids)[:seq_len])
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches = []
    for i in range(0, len(texts), batch_size):
        part = texts[i : i + batch_size]
        width = max(len(t) for t in part)
        ids = torch.full((len(part), width), pad, dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for j, t in enumerate(part):
            ids[j, : len(t)] = torch.tensor(t)
            mask[j, : len(t)] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def batch_latency(model, batch: dict) -> float:
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(**batch)
        return time.perf_counter() - t0


def run(variant, calib_n: int, seq_len: int, rl_model_dir: Path, dataset_dir: Path, out_dir: Path, ctx) -> dict[str, float]:
    from components.models import load_model, load_tokenizer

    tok = load_tokenizer(rl_model_dir)
    model = load_model(rl_model_dir, ctx.device, torch.float32).eval()
    train = load_split(dataset_dir, "train")
    held = load_split(dataset_dir, "eval")
    calib = calibration_batches(tok, train, calib_n, seq_len)
    held_batches = calibration_batches(tok, held, min(len(held), 64), seq_len)
    ppl_before = perplexity(model, held_batches)
    t0 = time.perf_counter()
    state = compress_model(model, variant, calib, progress=ctx.progress)
    seconds = time.perf_counter() - t0
    export_dense(model, tok, out_dir / "model", state)
    metrics = {k: float(v) for k, v in state.stats.items() if isinstance(v, (int, float))}
    if variant.quant is not None:
        export_compressed_tensors(model, state, tok, out_dir / "compressed")
        metrics["compressed_size_mb"] = _size(out_dir / "compressed") / 2**20
    metrics.update({
        "compress_seconds": seconds,
        "dense_size_mb": _size(out_dir / "model") / 2**20,
        "perplexity_before": ppl_before,
        "perplexity": perplexity(model, held_batches),
        "batch_latency_s": batch_latency(model, held_batches[0]) if held_batches else 0.0,
    })
    summary = state.summary()
    summary["stats"], stat_timings = split_measurements(summary.get("stats", {}))
    defining, timings = split_measurements(metrics)
    # Timings are run records: kept beside the payload (and in MLflow), outside its digest.
    (out_dir / "compression.json").write_text(json.dumps({"summary": summary, "metrics": defining}, indent=2, default=str))
    (run_info_dir(out_dir) / "timings.json").write_text(json.dumps({**stat_timings, **timings}, indent=2))
    ctx.log_artifact(out_dir / "compression.json", None)
    return metrics


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
