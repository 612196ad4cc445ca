"""llm-compressor reference run: one oneshot recipe on a saved checkpoint and calibration ids.

Runs INSIDE ``.venv-llmc`` (deployments/llmcompressor/setup_llmc_env.sh), never in the main
environment: it imports only torch, transformers and llmcompressor. The parity test and the
compression benchmark call it with ``.venv-llmc/bin/python`` and read back one ``torch.save`` file.

    python tests/compat/llmc_reference.py --model DIR --calib calib.pt --recipes wanda-2:4,gptq-w4g64
        --out-dir OUT [--batch-size 4] [--layers K] [--capture-inputs]

``calib.pt`` holds ``{"rows": [LongTensor [T_i], ...], "pad_token_id": int}`` (or ``{"input_ids":
LongTensor [N, T]}``). Batches are consecutive rows of ``--batch-size``, in file order (no
shuffle), right-padded to the longest row of the batch with an attention mask. llm-compressor
counts padding tokens in its statistics (the pipeline drops them), so a parity check uses
equal-length rows or ``--batch-size 1``, where no batch has padding.

Recipes (the settings the pipeline uses, spelled for llm-compressor):
  ``wanda-2:4``  WandaPruningModifier(sparsity=0.5, mask_structure="2:4")
  ``wanda-50``   WandaPruningModifier(sparsity=0.5, mask_structure="0:0")  (unstructured, per row)
  ``gptq-w4g64`` / ``gptq-w4g32``  GPTQModifier: int4 symmetric group scales, minmax observer,
                 block 128, dampening 0.01, actorder None (llm-compressor's default is "static")
every linear of the decoder layers; ``lm_head`` ignored (tied to the embeddings here).

Each recipe runs on a freshly loaded model and writes ``OUT/<recipe>.pt`` (``:`` written ``_``),
holding ``seconds`` / ``cpu_seconds`` of the oneshot call, ``weights`` (the final weight
of every targeted linear: pruned or fake-quantized) and, with
``--capture-inputs``, ``inputs``: per linear, the [tokens, in] activations it was *calibrated* on
(llm-compressor's sequential pipeline runs each layer twice per batch, calibrate then propagate;
only the first pass is kept).
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

TARGET = re.compile(r"\.layers\.\d+\.")


def build_recipe(spec: str):
    from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier

    if spec == "wanda-2:4":
        return [WandaPruningModifier(sparsity=0.5, mask_structure="2:4", targets=["Linear"], ignore=["lm_head"])]
    if spec == "wanda-50":
        return [WandaPruningModifier(sparsity=0.5, mask_structure="0:0", targets=["Linear"], ignore=["lm_head"])]
    m = re.fullmatch(r"gptq-w4g(\d+)", spec)
    if m:
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        from llmcompressor.modifiers.quantization import GPTQModifier

        weights = QuantizationArgs(
            num_bits=4, type="int", symmetric=True, strategy="group", group_size=int(m.group(1)),
            actorder=None, observer="memoryless_minmax",
        )  # fmt: skip
        scheme = QuantizationScheme(targets=["Linear"], weights=weights)
        return [
            GPTQModifier(
                config_groups={"group_0": scheme}, ignore=["lm_head"], block_size=128, dampening_frac=0.01, actorder=None
            )
        ]
    raise SystemExit(f"unknown recipe {spec!r}")


def load_batches(path: Path, batch_size: int) -> list[dict[str, torch.Tensor]]:
    data = torch.load(path)
    rows = list(data["rows"]) if "rows" in data else list(data["input_ids"])
    pad = int(data.get("pad_token_id", 0))
    out = []
    for i in range(0, len(rows), batch_size):
        part = rows[i : i + batch_size]
        width = max(len(r) for r in part)
        ids = torch.full((len(part), width), pad, dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for j, r in enumerate(part):
            ids[j, : len(r)] = r
            mask[j, : len(r)] = 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def run_recipe(args: argparse.Namespace, spec: str) -> dict:
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    if args.layers is not None:
        model.model.layers = model.model.layers[: args.layers]
        model.config.num_hidden_layers = args.layers
    batches = load_batches(args.calib, args.batch_size)
    loader = DataLoader(batches, batch_size=None, shuffle=False)  # items are ready batches
    n_batches = len(loader)

    targets = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and TARGET.search(n)}
    captured: dict[str, list[torch.Tensor]] = defaultdict(list)
    handles = []
    if args.capture_inputs:
        for name, mod in targets.items():

            def hook(module, inputs, name=name):
                if len(captured[name]) < n_batches:  # calibration pass only (propagation follows)
                    x = inputs[0].detach()
                    captured[name].append(x.reshape(-1, x.shape[-1]).clone())

            handles.append(mod.register_forward_pre_hook(hook))

    t0, c0 = time.perf_counter(), time.process_time()
    oneshot(
        model=model, tokenizer=AutoTokenizer.from_pretrained(args.model), dataset=loader,
        recipe=build_recipe(spec), pipeline="sequential",
        num_calibration_samples=sum(len(b["input_ids"]) for b in batches), shuffle_calibration_samples=False,
    )  # fmt: skip
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    for h in handles:
        h.remove()
    out = {
        "recipe": spec,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "threads": torch.get_num_threads(),
        "batches": n_batches,
        "decoder_layers": len(model.model.layers),
        "weights": {n: m.weight.detach().clone() for n, m in targets.items()},
    }
    if args.capture_inputs:
        out["inputs"] = {n: torch.cat(v) for n, v in captured.items()}
    print(f"{spec}: {seconds:.1f} s wall, {cpu_seconds:.1f} s cpu, {len(targets)} linears", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--calib", type=Path, required=True)
    ap.add_argument("--recipes", required=True, help="comma-separated, e.g. wanda-2:4,gptq-w4g64")
    ap.add_argument("--out-dir", type=Path, required=True, help="one <recipe>.pt per recipe")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--layers", type=int, default=None, help="keep only the first K decoder layers")
    ap.add_argument("--capture-inputs", action="store_true")
    args = ap.parse_args()
    import llmcompressor

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for spec in args.recipes.split(","):
        out = run_recipe(args, spec)  # a fresh model per recipe
        out["llmcompressor"] = llmcompressor.__version__
        torch.save(out, args.out_dir / f"{spec.replace(':', '_')}.pt")


if __name__ == "__main__":
    main()
