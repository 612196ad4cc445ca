"""Chunked token log-prob / entropy vs the log_softmax reference, values and gradients."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernels.logprobs import (
    chunked_token_logprobs,
    token_logprobs,
    token_logprobs_reference,
)

ROOT = Path(__file__).resolve().parents[2]
N, V, H = 37, 50, 12  # N is prime: no chunk size below divides it


def _inputs(dtype: torch.dtype, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=g)
    a = torch.randn(N, generator=g, dtype=torch.float64)
    b = torch.randn(N, generator=g, dtype=torch.float64)
    return hidden, weight, targets, a, b


def _run(fn, hidden, weight, targets, a, b, **kw):
    """Values and grads of the mixed loss sum(a * logp + b * entropy)."""
    hidden.grad = weight.grad = None
    logp, ent = fn(hidden, weight, targets, **kw)
    (a.to(logp.dtype) * logp + b.to(ent.dtype) * ent).sum().backward()
    return logp.detach(), ent.detach(), hidden.grad.clone(), weight.grad.clone()


# ---- hand-derived values -------------------------------------------------------------


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_uniform_logits_give_log_v(impl: str) -> None:
    # weight = 0 -> all logits 0 -> p = 1/V: log p = -log V, entropy = log V (any T).
    v = 8
    hidden = torch.randn(5, 3)
    weight = torch.zeros(v, 3)
    logp, ent = token_logprobs(hidden, weight, torch.arange(5), temperature=0.5, chunk_size=2, impl=impl)
    assert torch.allclose(logp, torch.full((5,), -math.log(v)), atol=1e-6)
    assert torch.allclose(ent, torch.full((5,), math.log(v)), atol=1e-6)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_two_class_values_and_grads_by_hand(impl: str, temperature: float) -> None:
    # H=1, hidden = [1], weight = [[0], [log 3]] -> logits [0, log 3], z = logits / T.
    # T=1: p = [1/4, 3/4]. T=2: z = [0, log(3)/2] -> p = [1, sqrt 3] / (1 + sqrt 3).
    r = 3 ** (1 / temperature)
    p0, p1 = 1 / (1 + r), r / (1 + r)
    ent_true = -(p0 * math.log(p0) + p1 * math.log(p1))
    hidden = torch.ones(1, 1, dtype=torch.float64, requires_grad=True)
    weight = torch.tensor([[0.0], [math.log(3)]], dtype=torch.float64)
    logp, ent = token_logprobs(hidden, weight, torch.tensor([1]), temperature, impl=impl)
    assert logp.item() == pytest.approx(math.log(p1), abs=1e-12)
    assert ent.item() == pytest.approx(ent_true, abs=1e-12)
    # d logp_1 / d hidden = (1/T) sum_j (1[j=1] - p_j) W_j = (1 - p1) log 3 / T (W_0 = 0).
    (g_logp,) = torch.autograd.grad(logp.sum(), hidden)
    assert g_logp.item() == pytest.approx((1 - p1) * math.log(3) / temperature, abs=1e-12)
    # dH/dz_j = -p_j (log p_j + H), so dH/dhidden = -p1 (log p1 + H) log 3 / T.
    logp, ent = token_logprobs(hidden, weight, torch.tensor([1]), temperature, impl=impl)
    (g_ent,) = torch.autograd.grad(ent.sum(), hidden)
    assert g_ent.item() == pytest.approx(-p1 * (math.log(p1) + ent_true) * math.log(3) / temperature, abs=1e-12)


# ---- parity with the reference ----------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_chunked_matches_reference(chunk_size: int, temperature: float, dtype: torch.dtype, tol: float) -> None:
    args = _inputs(dtype)
    ref = _run(token_logprobs_reference, *args, temperature=temperature)
    got = _run(chunked_token_logprobs, *args, temperature=temperature, chunk_size=chunk_size)
    for name, r, c in zip(("logp", "entropy", "grad_hidden", "grad_weight"), ref, got):
        assert c.dtype == r.dtype, name
        assert torch.allclose(c, r, rtol=tol, atol=tol), f"{name}: max err {(c - r).abs().max():.3g}"


def test_chunked_gradcheck_fp64() -> None:
    # Finite differences check the hand-derived backward independently of the reference.
    hidden, weight, targets, _, _ = _inputs(torch.float64)
    hidden, weight, targets = hidden[:9].detach().requires_grad_(), weight[:11].detach().requires_grad_(), targets[:9] % 11
    assert torch.autograd.gradcheck(
        lambda h, w: chunked_token_logprobs(h, w, targets, temperature=0.6, chunk_size=4), (hidden, weight)
    )


def test_large_logits_are_stable() -> None:
    # Logits of several hundred: exp would overflow without the max shift; entropy near 0
    # must not come from cancelling two ~1e2 numbers.
    args = _inputs(torch.float32, seed=1, scale=30.0)
    ref = _run(token_logprobs_reference, *args)
    got = _run(chunked_token_logprobs, *args, chunk_size=8)
    for r, c in zip(ref, got):
        assert torch.isfinite(c).all()
        assert torch.allclose(c, r, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("use", ["logp", "entropy"])
def test_single_output_used_and_frozen_weight(use: str) -> None:
    # Only one output reaches the loss (the other gets no gradient) and weight is frozen.
    hidden, weight, targets, a, _ = _inputs(torch.float64)
    weight = weight.detach()
    grads = []
    for fn in (token_logprobs_reference, lambda *x: chunked_token_logprobs(*x, chunk_size=5)):
        out = fn(hidden, weight, targets)[0 if use == "logp" else 1]
        (g,) = torch.autograd.grad((a * out).sum(), hidden)
        grads.append(g)
    assert torch.allclose(grads[0], grads[1], atol=1e-10)


def test_tied_weight_used_twice() -> None:
    # SmolLM2 ties the LM head to the embedding: the weight feeds the input side and the head.
    g = torch.Generator().manual_seed(3)
    emb0 = torch.randn(V, H, generator=g, dtype=torch.float64)
    mix = torch.randn(H, H, generator=g, dtype=torch.float64) / H**0.5
    ids = torch.randint(0, V, (N,), generator=g)
    targets = torch.randint(0, V, (N,), generator=g)
    a, b = torch.randn(N, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
    grads = []
    for fn in (token_logprobs_reference, lambda *x, **k: chunked_token_logprobs(*x, **k, chunk_size=6)):
        emb = emb0.clone().requires_grad_()
        hidden = torch.tanh(emb[ids] @ mix)
        logp, ent = fn(hidden, emb, targets, temperature=1.3)
        (a * logp + b * ent).sum().backward()
        grads.append(emb.grad)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype: torch.dtype) -> None:
    # Computed in fp32 from the same low-precision values as the reference: fp32 outputs,
    # grads in the input dtype (so within one rounding of that dtype).
    args = _inputs(dtype)
    ref = _run(token_logprobs_reference, *args, temperature=0.8)
    got = _run(chunked_token_logprobs, *args, temperature=0.8, chunk_size=10)
    assert got[0].dtype == got[1].dtype == torch.float32
    assert got[2].dtype == got[3].dtype == dtype
    assert torch.allclose(got[0], ref[0], atol=1e-5) and torch.allclose(got[1], ref[1], atol=1e-5)
    eps = torch.finfo(dtype).eps
    for r, c in zip(ref[2:], got[2:]):
        assert torch.allclose(c.float(), r.float(), rtol=2 * eps, atol=2 * eps)


def test_leading_dims_are_kept() -> None:
    hidden = torch.randn(2, 5, H, dtype=torch.float64)
    weight = torch.randn(V, H, dtype=torch.float64)
    targets = torch.randint(0, V, (2, 5))
    logp, ent = chunked_token_logprobs(hidden, weight, targets, chunk_size=3)
    ref_logp, ref_ent = token_logprobs_reference(hidden, weight, targets)
    assert logp.shape == ent.shape == (2, 5)
    assert torch.allclose(logp, ref_logp) and torch.allclose(ent, ref_ent)


# ---- memory bound ---------------------------------------------------------------------------


class _LargestTensor(TorchDispatchMode):
    """Records the largest numel any op produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_no_full_logits_tensor(impl: str) -> None:
    # n=64 tokens, V=200, H=4, chunk 8: the reference must create a 64 x 200 = 12800 tensor;
    # the chunked path's largest is a chunk of logits, 8 x 200 = 1600 (> V*H = 800, N*H = 256).
    n, v, h, c = 64, 200, 4, 8
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    with _LargestTensor() as mode:
        logp, ent = token_logprobs(hidden, weight, targets, chunk_size=c, impl=impl)
        (logp + 0.1 * ent).sum().backward()
    assert mode.largest == (n * v if impl == "reference" else c * v)


# ---- dispatcher -----------------------------------------------------------------------------


def test_auto_on_cpu_is_the_chunked_path() -> None:
    hidden, weight, targets, _, _ = _inputs(torch.float32)
    auto = token_logprobs(hidden, weight, targets, chunk_size=5)
    chunked = chunked_token_logprobs(hidden, weight, targets, chunk_size=5)
    assert all(torch.equal(x, y) for x, y in zip(auto, chunked))


def test_bad_arguments_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    hidden, weight, targets, _, _ = _inputs(torch.float32)
    with pytest.raises(ValueError, match="impl must be one of"):
        token_logprobs(hidden, weight, targets, impl="cuda")  # type: ignore[arg-type]
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs CUDA"):
        token_logprobs(hidden, weight, targets, impl="triton")
    with pytest.raises(ValueError, match="targets shape"):
        token_logprobs(hidden, weight, targets[:-1])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(hidden, weight, targets, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_logprobs(hidden, weight, targets, chunk_size=0)


def test_imports_and_runs_without_triton() -> None:
    # sys.modules["triton"] = None makes `import triton` raise ImportError, as if not installed.
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from kernels.logprobs import token_logprobs, triton_available\n"
        "assert not triton_available()\n"
        "lp, ent = token_logprobs(torch.randn(3, 4), torch.zeros(6, 4), torch.tensor([0, 1, 2]))\n"
        "import math; assert torch.allclose(ent, torch.full((3,), math.log(6)))\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
