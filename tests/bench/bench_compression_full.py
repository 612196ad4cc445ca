"""Full-model compression benchmark on SmolLM2-135M: ours against llm-compressor in the same run.

    python tests/bench/bench_compression_full.py [--model DIR] [--work DIR] [--calib-n 128]
        [--eval-n 48] [--max-new-tokens 16] [--llmc | --no-llmc] [--llmc-gptq-layers 2]
        [--out tests/bench/results/compression_full.json]

What it does, all on the same machine in one process tree:
1. the embedded SmolLM2-135M-Instruct as a transformers folder (``prepare_model``'s conversion,
   cached under ``--work``) and the ``default`` recipe's curated train / eval splits;
2. calibration = the first ``--calib-n`` curated training prompts with their answers, chat
   formatted and batched exactly as the compress stage does (``calibration_batches``);
3. our Wanda 2:4 and GPTQ W4 g64 of every decoder linear (210 layers), timed (wall and process
   CPU time), then greedy pass@1 on the first ``--eval-n`` held-out prompts (``evaluate_candidate``,
   ``--max-new-tokens``) and perplexity on them, against the uncompressed model on the same prompts;
4. with ``.venv-llmc`` present: llm-compressor's Wanda 2:4 on the whole model, and GPTQ W4 g64 for
   both implementations on the first ``--llmc-gptq-layers`` decoder blocks only (its full GPTQ
   takes about 36 min here), on the same calibration texts. llm-compressor gets them at its default
   batch size 1 (no padding; the pipeline batches 8 and drops padding from its statistics), so both
   calibrate on exactly the same tokens. Its Wanda masks are compared with ours and its pruned
   model is evaluated like ours.
The machine is shared: ``os.getloadavg()`` is recorded at each step, and speed is quoted as a
ratio of two timings taken in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from components.compression.apply import compress_model  # noqa: E402
from components.compression.config import parse_variant  # noqa: E402
from components.compression.export import perplexity  # noqa: E402

LLMC_PYTHON = ROOT / ".venv-llmc" / "bin" / "python"
REFERENCE = ROOT / "tests" / "compat" / "llmc_reference.py"
VARIANTS = ("wanda-2:4", "gptq-w4g64")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def prepare(work: Path, model: Path | None) -> tuple[Path, list[dict], list[dict]]:
    """Model folder and the default recipe's curated (train, eval) rows, cached under ``work``."""
    from components.data.curate import run_curation
    from components.models import load_tokenizer, prepare_model
    from components.recipe import load_recipe
    from components.rewards import get_reward
    from components.stages.curate import load_split

    if model is None:
        model = work / "smollm2"
        if not (model / "config.json").exists():
            log("converting the embedded SmolLM2 (about 30 s)")
            prepare_model("embedded:smollm2", model)
    data = work / "curated-default"
    if not (data / "manifest.json").exists():
        tok = load_tokenizer(model)
        rewards: dict = {}

        def verify(task: str, answer: str, meta: dict) -> bool:
            fn = rewards.setdefault(task, get_reward(task))
            return fn.can_verify(answer, meta)

        run_curation(
            load_recipe("default").curate, data, verify=verify,
            count_tokens=lambda text: len(tok(text, add_special_tokens=False)["input_ids"]),
        )  # fmt: skip
    return model, load_split(data, "train"), load_split(data, "eval")


def load(model_dir: Path, layers: int | None = None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if layers is not None:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
    return model


def evaluate(name: str, model, tok, rows: list[dict], max_new_tokens: int) -> dict:
    """Greedy pass@1 (and one sampled pass, which ``evaluate_candidate`` always runs)."""
    from components.engines.base import SamplingParams
    from components.engines.transformers_engine import TransformersEngine
    from components.evaluation.runner import Completion, EvalConfig, evaluate_candidate
    from components.prompts import messages_for
    from components.scoring import RewardScorer

    engine = TransformersEngine(model, tok, max_batch_sequences=64)
    msgs = {r["prompt"]: messages_for(r) for r in rows}

    def generate(prompts, n, temperature, max_new, seed):
        out = engine.generate([msgs[p] for p in prompts], n, SamplingParams(temperature=temperature, max_new_tokens=max_new, seed=seed))
        return [[Completion(text=s.text, num_tokens=s.num_tokens) for s in g] for g in out.groups]

    cfg = EvalConfig(k=1, n_samples=1, temperature=1.0, max_new_tokens=max_new_tokens, determinism_check=False)
    scorer = RewardScorer()
    rep = evaluate_candidate(name, generate, rows, lambda row, text: scorer(row, text), cfg)
    return {
        "greedy_pass1": rep.greedy_pass1,
        "sampled_pass1": rep.pass_at_1_sampled,
        "greedy_latency_s": round(rep.latency_s or 0.0, 1),
        "correct": rep.correct,
    }


def timed_compress(model, spec: str, calib: list[dict]) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    la = load_avg()
    state = compress_model(
        model, parse_variant(spec), calib,
        progress=lambda msg, frac: log(f"  ours {spec}: {msg} {time.perf_counter() - t0:.0f}s"),
    )  # fmt: skip
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),  # all threads of this process
        "loadavg_before": la,
        "loadavg_after": load_avg(),
        "sparsity": round(state.stats["sparsity"], 4),
        "avg_bits_targeted": state.stats["avg_bits_targeted"],
        "group_size": state.group_size,
    }


def flips(base: dict[str, bool], other: dict[str, bool]) -> dict[str, int]:
    return {
        "lost": sum(base[k] and not other[k] for k in base),
        "gained": sum(other[k] and not base[k] for k in base),
    }


def run_llmc(model_dir: Path, calib_file: Path, recipes: str, out_dir: Path, layers: int | None) -> dict[str, dict]:
    cmd = [str(LLMC_PYTHON), str(REFERENCE), "--model", str(model_dir), "--calib", str(calib_file),
           "--recipes", recipes, "--out-dir", str(out_dir), "--batch-size", "1"]  # fmt: skip
    if layers is not None:
        cmd += ["--layers", str(layers)]
    log(f"llm-compressor: {recipes} (layers={layers or 'all'})")
    la = load_avg()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"llm-compressor reference failed:\n{proc.stderr[-4000:]}")
    out = {}
    for spec in recipes.split(","):
        res = torch.load(out_dir / f"{spec.replace(':', '_')}.pt")
        res["loadavg_before"], res["loadavg_after"] = la, load_avg()
        out[spec] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="SmolLM2 transformers folder (default: convert)")
    ap.add_argument("--work", type=Path, default=ROOT / ".posttrain" / "bench-compression")
    ap.add_argument("--calib-n", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128, help="calibration truncation (prompts are shorter)")
    ap.add_argument("--batch", type=int, default=8, help="calibration batch (the compress stage's default)")
    ap.add_argument("--eval-n", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--llmc", action=argparse.BooleanOptionalAction, default=LLMC_PYTHON.exists())
    ap.add_argument("--llmc-gptq-layers", type=int, default=2)
    ap.add_argument("--layers", type=int, default=None, help="keep only the first K decoder layers (a quick check)")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "bench" / "results" / "compression_full.json")
    args = ap.parse_args()
    from components.models import load_tokenizer
    from components.stages.compress import calibration_batches

    args.work.mkdir(parents=True, exist_ok=True)
    model_dir, train, held = prepare(args.work, args.model)
    tok = load_tokenizer(model_dir)
    calib = calibration_batches(tok, train, args.calib_n, args.seq_len, args.batch)
    rows = held[: args.eval_n]
    held_batches = calibration_batches(tok, rows, len(rows), args.seq_len, args.batch)
    n_tokens = int(sum(int(b["attention_mask"].sum()) for b in calib))
    result: dict = {
        "model": "SmolLM2-135M-Instruct (embedded GGUF, dequantized to fp32)",
        "decoder_layers": args.layers,
        "calibration": {"samples": args.calib_n, "tokens": n_tokens, "batch": args.batch, "source": "default recipe, curated train split"},
        "eval": {"prompts": len(rows), "max_new_tokens": args.max_new_tokens, "source": "default recipe, curated eval split"},
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "loadavg_start": load_avg(),
        "torch": torch.__version__,
        "ours": {},
    }
    log(f"calibration: {args.calib_n} samples, {n_tokens} tokens; eval: {len(rows)} prompts")

    dense = load(model_dir, args.layers)
    result["decoder_layers"] = len(dense.model.layers)
    base = evaluate("dense", dense, tok, rows, args.max_new_tokens)
    base["perplexity"] = round(perplexity(dense, held_batches), 3)
    result["dense"] = {k: v for k, v in base.items() if k != "correct"}
    log(f"dense: {result['dense']}")
    del dense

    for spec in VARIANTS:
        model = load(model_dir, args.layers)
        row = timed_compress(model, spec, calib)
        ev = evaluate(spec, model, tok, rows, args.max_new_tokens)
        row.update({k: v for k, v in ev.items() if k != "correct"})
        row["perplexity"] = round(perplexity(model, held_batches), 3)
        row["greedy_pass1_delta"] = round(ev["greedy_pass1"] - base["greedy_pass1"], 4)
        row["flips_vs_dense"] = flips(base["correct"], ev["correct"])
        result["ours"][spec] = row
        log(f"ours {spec}: {row}")
        if spec == "wanda-2:4":
            ours_masks = {n: m.weight != 0 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
        del model

    if args.llmc:
        k = args.llmc_gptq_layers
        model = load(model_dir, k)
        result["ours"][f"gptq-w4g64-first{k}"] = timed_compress(model, "gptq-w4g64", calib)
        del model
        # the same calibration texts, one unpadded row each (llm-compressor's default batch size 1)
        calib_rows = [b["input_ids"][j][b["attention_mask"][j].bool()] for b in calib for j in range(len(b["input_ids"]))]
        calib_file = args.work / "llmc-calib.pt"
        torch.save({"rows": calib_rows, "pad_token_id": tok.pad_token_id or 0}, calib_file)
        llmc: dict = {}
        ref = run_llmc(model_dir, calib_file, "wanda-2:4", args.work / "llmc-out", args.layers)["wanda-2:4"]
        model = load(model_dir, args.layers)
        mods = dict(model.named_modules())
        same = total = 0
        with torch.no_grad():
            for name, w in ref["weights"].items():
                same += int(((w != 0) == ours_masks[name]).sum())
                total += w.numel()
                mods[name].weight.copy_(w)
        ev = evaluate("llmc-wanda-2:4", model, tok, rows, args.max_new_tokens)
        llmc["wanda-2:4"] = {
            "seconds": round(ref["seconds"], 1), "cpu_seconds": round(ref["cpu_seconds"], 1),
            "loadavg_before": ref["loadavg_before"], "loadavg_after": ref["loadavg_after"],
            "batch_size": 1, "mask_agreement_with_ours": round(same / total, 6),
            "greedy_pass1": ev["greedy_pass1"], "greedy_pass1_delta": round(ev["greedy_pass1"] - base["greedy_pass1"], 4),
            "perplexity": round(perplexity(model, held_batches), 3),
        }  # fmt: skip
        del model, ref
        ref = run_llmc(model_dir, calib_file, "gptq-w4g64", args.work / "llmc-out", k)["gptq-w4g64"]
        llmc[f"gptq-w4g64-first{k}"] = {
            "seconds": round(ref["seconds"], 1), "cpu_seconds": round(ref["cpu_seconds"], 1),
            "loadavg_before": ref["loadavg_before"], "loadavg_after": ref["loadavg_after"],
            "batch_size": 1, "decoder_layers": ref["decoder_layers"],
        }  # fmt: skip
        result["llmcompressor"] = {"version": ref["llmcompressor"], **llmc}
        ours_g, theirs_g = result["ours"][f"gptq-w4g64-first{k}"], llmc[f"gptq-w4g64-first{k}"]
        ours_w, theirs_w = result["ours"]["wanda-2:4"], llmc["wanda-2:4"]
        result["speedup_same_run"] = {
            "wanda-2:4_wall": round(theirs_w["seconds"] / ours_w["seconds"], 2),
            "wanda-2:4_cpu": round(theirs_w["cpu_seconds"] / ours_w["cpu_seconds"], 2),
            f"gptq-w4g64-first{k}_wall": round(theirs_g["seconds"] / ours_g["seconds"], 2),
            f"gptq-w4g64-first{k}_cpu": round(theirs_g["cpu_seconds"] / ours_g["cpu_seconds"], 2),
        }
        for f in (args.work / "llmc-out").glob("*.pt"):
            f.unlink()  # full-model weights: hundreds of MB
    result["loadavg_end"] = load_avg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
