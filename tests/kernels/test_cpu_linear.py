"""oneDNN CPU linear against ``F.linear`` and a float64 product; the no-grad routing mode."""

import threading

import pytest
import torch

from kernels import cpu_linear
from kernels.cpu_linear import linear_reference, onednn_available, onednn_linear, onednn_linears

SHAPES = [(64, 576, 576), (64, 1536, 576), (1, 576, 4096), (7, 576, 1536), (300, 96, 64)]


def _inputs(m: int, k: int, n: int, bias: bool = False):
    g = torch.Generator().manual_seed(m * 7919 + k * 31 + n)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    return x, w, (torch.randn(n, generator=g) if bias else None)


def _bound(x, w, b):
    """The classic bound of a float32 dot product of length K: |err| <= K u sum|x_i w_i| (u = 2^-24)."""
    k = x.shape[-1] + (1 if b is not None else 0)
    scale = x.abs().double() @ w.abs().double().T + (b.abs().double() if b is not None else 0)
    return k * 2.0 ** -24 * scale


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_onednn_linear_is_an_fp32_product(shape, bias, packed):
    """Within the float32 bound of the exact product, like MKL's; so the two agree to rounding."""
    assert onednn_available()  # PyTorch's x86 and arm64 CPU wheels ship oneDNN
    x, w, b = _inputs(*shape, bias=bias)
    wk = torch.ops.mkldnn._reorder_linear_weight(w, shape[0]) if packed else w
    got = onednn_linear(x, wk, b)
    exact = torch.nn.functional.linear(x.double(), w.double(), b.double() if b is not None else None)
    bound = _bound(x, w, b)
    assert got.dtype == torch.float32 and got.shape == (shape[0], shape[2])
    assert bool(((got.double() - exact).abs() <= bound).all())
    assert bool(((got.double() - linear_reference(x, w, b).double()).abs() <= 2 * bound).all())


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
def test_mode_routes_no_grad_linears_only_and_leaves_modules_alone(monkeypatch, batch_hint):
    """Unpacked weights, or (``batch_hint``) weights packed on first use for about that many rows."""
    monkeypatch.setattr(cpu_linear, "MIN_WEIGHT_NUMEL", 0)
    model = _tiny_mlp()
    x = torch.randn(5, 16)
    with torch.no_grad():
        want = model(x)
    with onednn_linears(batch_hint) as mode:
        assert mode is not None
        with onednn_linears(batch_hint) as inner:
            assert inner is None  # a block inside another uses the outer one
        with torch.inference_mode():
            got = model(x)
            again = model(x)
        assert mode.calls == 4
        # Autograd on: F.linear, so gradients are the plain path's, bit for bit.
        model(x).square().sum().backward()
        assert mode.calls == 4
    assert all("forward" not in m.__dict__ for m in model.modules())
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).square().sum().backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))
    assert torch.allclose(got, want, atol=1e-5) and torch.equal(got, again)


def test_packed_weight_follows_an_in_place_change(monkeypatch):
    monkeypatch.setattr(cpu_linear, "MIN_WEIGHT_NUMEL", 0)
    model = _tiny_mlp()
    x = torch.randn(5, 16)
    with torch.no_grad(), onednn_linears(batch_hint=8):
        before = model(x)
        model[2].weight.mul_(2.0)
        after = model(x)
        assert torch.allclose(after, 2 * before, atol=1e-5)


def test_other_threads_small_layers_and_other_dtypes_keep_f_linear(monkeypatch):
    model = _tiny_mlp()
    x = torch.randn(5, 16)
    with torch.no_grad(), onednn_linears(batch_hint=8) as mode:
        model(x)
        assert mode.calls == 0  # 16 x 32 and 32 x 8: below MIN_WEIGHT_NUMEL
        monkeypatch.setattr(cpu_linear, "MIN_WEIGHT_NUMEL", 0)
        worker = threading.Thread(target=lambda: model(x))
        worker.start()
        worker.join()
        assert mode.calls == 0  # the mode is this thread's
        model.double()(x.double())
        assert mode.calls == 0
    monkeypatch.setenv("POSTTRAIN_ONEDNN_LINEAR", "0")
    with onednn_linears() as off:
        assert off is None


def test_has_routable_linears_needs_a_large_enough_fp32_cpu_layer(monkeypatch):
    model = _tiny_mlp()
    assert not cpu_linear.has_routable_linears(model)
    monkeypatch.setattr(cpu_linear, "MIN_WEIGHT_NUMEL", 0)
    assert cpu_linear.has_routable_linears(model)
    assert not cpu_linear.has_routable_linears(model.double())
