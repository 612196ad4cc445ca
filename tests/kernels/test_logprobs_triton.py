"""Triton log-prob / entropy kernels vs the reference, on CPU through TRITON_INTERPRET=1.

The interpreter must be switched on before triton is imported, so the check runs in a
subprocess. triton is a pinned dependency: if it is missing the subprocess fails and so
does this test (no skip). fp32 and fp16 only: bf16 ``tl.dot`` is wrong in the interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# N=37, V=70, H=20 with blocks 16/32/16: 3 row blocks (last one partial), 3 vocab tiles
# (last one 6 wide, so the online logsumexp rescales twice and masks), 2 hidden slices
# (last one partial). Backward chunk 16 leaves a partial last chunk too.
_SCRIPT = r"""
import json, sys
import torch
from kernels.logprobs import token_logprobs, token_logprobs_reference
from kernels._triton_logprobs import triton_token_logprobs

def run(fn, h, w, t, a, b, T, use):
    h.grad = w.grad = None
    logp, ent = fn(h, w, t, T)
    loss = {"both": (a * logp + b * ent).sum(), "logp": (a * logp).sum(), "entropy": (b * ent).sum()}[use]
    loss.backward()
    return [logp.detach(), ent.detach(), h.grad.float(), w.grad.float()], [str(x.dtype) for x in (logp, h.grad, w.grad)]

cases = json.loads(sys.argv[1])
report = []
for case in cases:
    g = torch.Generator().manual_seed(case["seed"])
    dt = getattr(torch, case["dtype"])
    n, v, hd = case["shape"]
    h = torch.randn(n, hd, generator=g).to(dt).requires_grad_()
    w = (torch.randn(v, hd, generator=g) * case["scale"]).to(dt).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    a, b = torch.randn(n, generator=g), torch.randn(n, generator=g)
    blocks = case["blocks"]
    tri = lambda h, w, t, T: triton_token_logprobs(h, w, t, T, chunk_size=16, config=dict(block_n=blocks[0], block_v=blocks[1], block_h=blocks[2]))
    if case.get("dispatch"):
        tri = lambda h, w, t, T: token_logprobs(h, w, t, T, chunk_size=16, impl="triton")
    # Ground truth in fp64 from the very same (rounded) inputs, so only Triton's error is measured.
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref, _ = run(token_logprobs_reference, h64, w64, t, a.double(), b.double(), case["T"], case["use"])
    got, dtypes = run(tri, h, w, t, a, b, case["T"], case["use"])
    base, _ = run(token_logprobs_reference, h, w, t, a, b, case["T"], case["use"])  # fp32 log_softmax
    err = lambda xs: [((x.double() - y).abs() / (1 + y.abs())).max().item() for x, y in zip(xs, ref)]
    report.append({"errs": err(got), "ref_errs": err(base), "dtypes": dtypes, "finite": all(bool(torch.isfinite(x).all()) for x in got)})
print(json.dumps(report))
"""

_BLOCKS = [16, 32, 16]
_CASES = [
    {"dtype": "float32", "shape": [37, 70, 20], "T": 1.0, "use": "both", "scale": 1.0, "blocks": _BLOCKS, "tol": 1e-5},
    {"dtype": "float32", "shape": [37, 70, 20], "T": 0.7, "use": "both", "scale": 1.0, "blocks": _BLOCKS, "tol": 1e-5},
    {"dtype": "float32", "shape": [37, 70, 20], "T": 1.3, "use": "logp", "scale": 1.0, "blocks": _BLOCKS, "tol": 1e-5},
    {"dtype": "float32", "shape": [37, 70, 20], "T": 1.0, "use": "entropy", "scale": 1.0, "blocks": _BLOCKS, "tol": 1e-5},
    # Logits of several hundred: the max moves between tiles, exp would overflow unshifted;
    # fp32 logits then carry ~|z| * 2^-24 ~ 1e-5 absolute error, so the cap is looser.
    {"dtype": "float32", "shape": [37, 70, 20], "T": 1.0, "use": "both", "scale": 30.0, "blocks": _BLOCKS, "tol": 3e-4},
    # Default (GPU-sized) blocks through the dispatcher: one mostly-masked tile.
    {"dtype": "float32", "shape": [21, 90, 24], "T": 0.9, "use": "both", "scale": 1.0, "blocks": None, "dispatch": True,
     "tol": 1e-5},
    # fp16 inputs: fp32 values; grads rounded to fp16 (half an ulp: 2^-11 ~ 5e-4 relative).
    {"dtype": "float16", "shape": [37, 70, 20], "T": 0.7, "use": "both", "scale": 1.0, "blocks": _BLOCKS, "tol": 2e-3},
]


@pytest.fixture(scope="module")
def report() -> list[dict]:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cases = [{**c, "seed": i} for i, c in enumerate(_CASES)]
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(cases)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, f"triton subprocess failed (is triton==3.9.0 installed?):\n{out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("i", range(len(_CASES)))
def test_triton_matches_reference(report: list[dict], i: int) -> None:
    case, res = _CASES[i], report[i]
    assert res["finite"]
    names = ("logp", "entropy", "grad_hidden", "grad_weight")
    for name, err, ref_err in zip(names, res["errs"], res["ref_errs"]):
        # Errors are against fp64 truth. Triton sums in another order than the fp32
        # log_softmax reference, so it may differ by a few of that reference's own error
        # (factor 4) plus 16 fp32 ulps (16 * 2^-23 ~ 2e-6); "tol" is the absolute cap.
        assert err <= 4 * ref_err + 16 * 2**-23, f"{name}: {err:.3g} vs fp32 reference {ref_err:.3g}, case {case}"
        assert err < case["tol"], f"{name}: rel err {err:.3g} in case {case}"
    # Values are fp32 whatever the input dtype; grads come back in the input dtype.
    assert res["dtypes"] == ["torch.float32", f"torch.{case['dtype']}", f"torch.{case['dtype']}"]
