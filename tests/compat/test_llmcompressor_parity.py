"""Parity with llm-compressor (the reference implementation) on a tiny random Llama.

Both sides get the same checkpoint and the same calibration token ids (a saved tensor, equal-length
rows, no padding, batches of 4 in file order). llm-compressor runs in its own environment
(``.venv-llmc``, transformers 5.17) through ``tests/compat/llmc_reference.py``; this file runs ours.

What is compared, and why it is fair:
- Wanda masks (2:4 and unstructured 50 %): ours from ``compress_model`` and theirs from
  ``WandaPruningModifier``, both sequential (layer l+1 calibrated on the outputs of the already
  pruned layer l). Pruning only zeroes weights, so with identical masks in layer l the inputs of
  layer l+1 are the same up to float rounding (different transformers versions, a different
  summation order of the column norms: theirs is a running mean over sequences, ours a sum over
  tokens). Agreement = fraction of identical mask entries over all targeted weights. Every
  disagreement must be a near-tie: in each (row, group) where the masks differ, the scores
  ``|W_ij| * ||X_j||`` of the weights only we keep and of those only they keep must agree to
  ``TIE_RTOL`` of the group's largest score (float32 rounding differences are ~1e-6 relative).
- GPTQ W4 g64 (symmetric, minmax scales, damp 0.01, block 128, no act-order), twice:
  1. per linear on the *same* inputs: the activations llm-compressor calibrated each linear on
     (captured by the reference script) give the Hessian for our kernel; the reconstruction error
     ``||X W^T - X Q^T||^2`` of ours must be <= 1.05 x theirs for every linear;
  2. end to end: our sequential ``compress_model`` against their sequential oneshot, compared by
     the squared error of the final logits against the uncompressed model (on the calibration
     batches and on held-out ids): ours <= 1.05 x theirs in total.
  The two implementations are the same algorithm with the same scales; they differ only in the
  precision of the inverse Hessian (float64 Cholesky here, float32 there), which moves a value
  across a rounding midpoint now and then. So we also require >= 95 % identical quantized weights.

Deselected by default (marker ``llmcompressor``); run with ``make test-llmc``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from components.compression.apply import compress_model
from components.compression.config import parse_variant
from components.models import build_tiny_model
from kernels.gptq import gptq_quantize

pytestmark = pytest.mark.llmcompressor

ROOT = Path(__file__).resolve().parents[2]
LLMC_PYTHON = ROOT / ".venv-llmc" / "bin" / "python"
REFERENCE = Path(__file__).with_name("llmc_reference.py")
RECIPES = ("wanda-2:4", "wanda-50", "gptq-w4g64")
N_SEQ, SEQ_LEN, BATCH = 16, 32, 4
TIE_RTOL = 1e-4  # 100x float32 rounding of a score: only genuine near-ties may flip
ERROR_SLACK = 1.05  # the bound: no worse than llm-compressor by more than 5 %
MIN_SAME_GRID = 0.95


def _batches(ids: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    return [
        {"input_ids": ids[i : i + BATCH], "attention_mask": torch.ones_like(ids[i : i + BATCH])}
        for i in range(0, len(ids), BATCH)
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    if not LLMC_PYTHON.exists():
        pytest.fail("no .venv-llmc: run deployments/llmcompressor/setup_llmc_env.sh (make test-llmc does)")
    work = tmp_path_factory.mktemp("llmc-parity")
    model_dir = work / "model"
    # hidden 128 and intermediate 384: two groups of 64 per row, down_proj spans 3 GPTQ blocks of 128
    build_tiny_model(model_dir, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=384)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (N_SEQ, SEQ_LEN), generator=g)
    held = torch.randint(0, vocab, (8, SEQ_LEN), generator=g)
    torch.save({"input_ids": ids}, work / "calib.pt")
    cmd = [
        str(LLMC_PYTHON), str(REFERENCE), "--model", str(model_dir), "--calib", str(work / "calib.pt"),
        "--recipes", ",".join(RECIPES), "--out-dir", str(work / "ref"), "--batch-size", str(BATCH),
        "--capture-inputs",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    refs = {r: torch.load(work / "ref" / f"{r.replace(':', '_')}.pt") for r in RECIPES}
    return {"model_dir": model_dir, "batches": _batches(ids), "held": _batches(held), "refs": refs}


def _dense(setup: dict):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(setup["model_dir"], dtype=torch.float32).eval()


def _ours(setup: dict, spec: str):
    model = _dense(setup)
    compress_model(model, parse_variant(spec), setup["batches"])
    return model


def _near_tie_violations(ours: torch.Tensor, theirs: torch.Tensor, scores: torch.Tensor, unit: int) -> list[float]:
    """Relative score gaps of the swapped weights in each unit (group of ``unit`` inputs of a row)
    where the masks differ; a list of the gaps that exceed ``TIE_RTOL``."""
    a, b, s = (t.reshape(-1, unit) for t in (ours, theirs, scores))
    bad = []
    for u in torch.nonzero((a != b).any(dim=1)).flatten().tolist():
        only_ours = torch.sort(s[u][a[u] & ~b[u]]).values
        only_theirs = torch.sort(s[u][b[u] & ~a[u]]).values
        if only_ours.numel() != only_theirs.numel():  # a different count is never a tie
            bad.append(float("inf"))
            continue
        gap = float((only_ours - only_theirs).abs().max()) / float(s[u].max())
        if gap > TIE_RTOL:
            bad.append(gap)
    return bad


@pytest.mark.parametrize("spec", ["wanda-2:4", "wanda-50"])
def test_wanda_masks_agree_with_llmcompressor(setup: dict, spec: str) -> None:
    ref = setup["refs"][spec]
    mods = dict(_ours(setup, spec).named_modules())
    original = dict(_dense(setup).named_modules())
    same = total = 0
    violations: dict[str, list[float]] = {}
    for name, theirs_w in ref["weights"].items():
        ours = mods[name].weight != 0
        theirs = theirs_w != 0  # random normal init: no weight is zero before pruning
        same += int((ours == theirs).sum())
        total += ours.numel()
        x = ref["inputs"][name].double()
        scores = original[name].weight.double().abs() * x.square().sum(dim=0).sqrt()
        unit = 4 if spec == "wanda-2:4" else ours.shape[1]  # 2:4 groups, or whole rows
        bad = _near_tie_violations(ours, theirs, scores, unit)
        if bad:
            violations[name] = bad
        # both keep exactly half of every row (2:4: two of each four)
        assert torch.equal(ours.sum(dim=1), theirs.sum(dim=1))
    # per layer: q, o 128x128; k, v 64x128 (2 KV heads of 32); gate, up 384x128; down 128x384
    assert total == 2 * (2 * 128 * 128 + 2 * 64 * 128 + 3 * 384 * 128)  # = 393216
    assert not violations, violations
    assert same / total >= 0.999, (same, total)


def test_gptq_error_per_linear_on_llmcompressor_inputs(setup: dict) -> None:
    ref = setup["refs"]["gptq-w4g64"]
    original = dict(_dense(setup).named_modules())
    assert len(ref["inputs"]) == 14  # 7 linears x 2 decoder layers
    for name, x in ref["inputs"].items():
        w, theirs = original[name].weight.detach(), ref["weights"][name]
        h = 2.0 * x.double().T @ x.double() / x.shape[0]
        ours = gptq_quantize(w, h, bits=4, group_size=64, symmetric=True, block_size=128, damp=0.01).weight
        y = x @ w.T
        err_ours = float((y - x @ ours.T).square().sum())
        err_theirs = float((y - x @ theirs.T).square().sum())
        assert err_ours <= ERROR_SLACK * err_theirs, (name, err_ours, err_theirs)
        assert float((ours == theirs).float().mean()) >= MIN_SAME_GRID, name


@torch.inference_mode()
def _logit_error(model, reference, batches) -> float:
    return sum(
        float((model(**b, use_cache=False).logits - reference(**b, use_cache=False).logits).square().sum())
        for b in batches
    )


def test_gptq_end_to_end_error_no_worse_than_llmcompressor(setup: dict) -> None:
    ref = setup["refs"]["gptq-w4g64"]
    ours, theirs, dense = _ours(setup, "gptq-w4g64"), _dense(setup), _dense(setup)
    mods_ours, mods_theirs = dict(ours.named_modules()), dict(theirs.named_modules())
    same = total = 0
    with torch.no_grad():
        for name, w in ref["weights"].items():
            mods_theirs[name].weight.copy_(w)
            same += int((mods_ours[name].weight == w).sum())
            total += w.numel()
    assert same / total >= MIN_SAME_GRID
    for batches in (setup["batches"], setup["held"]):
        err_ours, err_theirs = _logit_error(ours, dense, batches), _logit_error(theirs, dense, batches)
        assert 0 < err_ours <= ERROR_SLACK * err_theirs, (err_ours, err_theirs)
