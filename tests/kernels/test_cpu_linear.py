"""oneDNN CPU linear against ``F.linear`` and a float64 product; the engine's routing of layers."""

import pytest
import torch

from kernels import cpu_linear
from kernels.cpu_linear import linear_reference, onednn_available, onednn_linear, onednn_linears

SHAPES = [(64, 576, 576), (64, 1536, 576), (1, 576, 4096), (7, 576, 1536), (300, 96, 64)]


def _inputs(m: int, k: int, n: int, bias: bool = False):
    g = torch.Generator().manual_seed(m * 7919 + k * 31 + n)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    return x, w, (torch.randn(n, generator=g) if bias else None)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_onednn_linear_is_an_fp32_product(shape, bias):
    """Within the classic bound of a float32 dot product of length K, |err| <= K u sum|x_i w_i|
    (u = 2^-24), like MKL's; so the two agree to float rounding."""
    assert onednn_available()  # PyTorch's x86 and arm64 CPU wheels ship oneDNN
    x, w, b = _inputs(*shape, bias=bias)
    got = onednn_linear(x, w, b)
    exact = torch.nn.functional.linear(x.double(), w.double(), b.double() if b is not None else None)
    k = shape[1] + (1 if bias else 0)
    scale = x.abs().double() @ w.abs().double().T + (b.abs().double() if b is not None else 0)
    bound = k * 2.0 ** -24 * scale
    assert got.dtype == torch.float32 and got.shape == (shape[0], shape[2])
    assert bool(((got.double() - exact).abs() <= bound).all())
    ref = linear_reference(x, w, b).double()
    assert bool(((got.double() - ref).abs() <= 2 * bound).all())


def test_onednn_linear_takes_batched_and_strided_inputs():
    x, w, b = _inputs(12, 64, 32, bias=True)
    x3 = x.view(3, 4, 64)
    assert torch.allclose(onednn_linear(x3, w, b), linear_reference(x3, w, b), atol=1e-4)
    xt = x.T.contiguous().T  # the same values, column-major strides
    assert torch.equal(onednn_linear(xt, w, b), onednn_linear(x, w, b))


def test_onednn_linear_does_not_depend_on_the_thread_count():
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append([onednn_linear(*_inputs(*s)) for s in SHAPES])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def _tiny_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.SiLU(), torch.nn.Linear(32, 8, bias=False))


@pytest.mark.parametrize("batch_hint", [None, 8])
def test_onednn_linears_routes_no_grad_calls_only_and_restores(monkeypatch, batch_hint):
    """Unpacked weights, or (``batch_hint``) weights prepacked for about that many rows."""
    monkeypatch.setattr(cpu_linear, "MIN_WEIGHT_NUMEL", 0)
    model = _tiny_mlp()
    calls = []
    real = cpu_linear.onednn_linear
    monkeypatch.setattr(cpu_linear, "onednn_linear", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(5, 16)
    with torch.no_grad():
        want = model(x)
    with onednn_linears(model, batch_hint=batch_hint) as routed:
        assert routed == 2
        with onednn_linears(model, batch_hint=batch_hint) as inner:
            assert inner == 0  # a block inside another reuses the outer one's layers
        with torch.inference_mode():
            got = model(x)
        assert len(calls) == 2
        # Autograd on: F.linear, so gradients are the plain path's, bit for bit.
        model(x).square().sum().backward()
        assert len(calls) == 2
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).square().sum().backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))
    assert torch.allclose(got, want, atol=1e-5)
    assert all("forward" not in m.__dict__ for m in model.modules())
    with torch.no_grad():
        model(x)
    assert len(calls) == 2  # nothing routed after the block


def test_setting_turns_it_off_and_other_layers_are_left_alone(monkeypatch):
    model = _tiny_mlp()
    with onednn_linears(model) as routed:
        assert routed == 0  # 16 x 32 and 32 x 8: below MIN_WEIGHT_NUMEL
    monkeypatch.setattr(cpu_linear, "MIN_WEIGHT_NUMEL", 0)
    model[2].to(torch.float64)
    with onednn_linears(model) as routed:
        assert routed == 1  # the float64 layer keeps F.linear
    monkeypatch.setenv("POSTTRAIN_ONEDNN_LINEAR", "0")
    with onednn_linears(model) as routed:
        assert routed == 0
