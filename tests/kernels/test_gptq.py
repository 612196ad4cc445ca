"""GPTQ: blocked == unblocked, beats RTN on the data it was calibrated on, handles dead columns,
act-order and fixed pruning masks."""

from __future__ import annotations

import torch

from kernels.gptq import gptq_quantize, gptq_reference, hessian_inverse_cholesky
from kernels.quant import dequantize, fake_quantize, qrange


def _calibration(n: int = 512, width: int = 64, seed: int = 0) -> torch.Tensor:
    # correlated, unevenly scaled features (like real activations): where GPTQ has something to exploit
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, width, generator=g)
    mix = torch.randn(width, width, generator=g) / width**0.5 + torch.eye(width)
    return (z @ mix) * torch.linspace(0.2, 3.0, width)


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return 2.0 * x.T @ x / x.shape[0]


def test_blocked_update_matches_unblocked_reference() -> None:
    # lazy batch updates only reorder the same arithmetic: identical grid points in float64
    x = _calibration().double()
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kw = dict(bits=4, group_size=16, symmetric=True, damp=0.01)
    ref = gptq_reference(w, _hessian(x), **kw)
    for block in (8, 16, 64):
        got = gptq_quantize(w, _hessian(x), block_size=block, **kw)
        assert torch.equal(got.q, ref.q)
        assert abs(got.loss - ref.loss) < 1e-9 * max(1.0, ref.loss)


def test_gptq_reconstruction_error_is_lower_than_rtn() -> None:
    x = _calibration()
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))
    rtn = fake_quantize(w, 4, 16)
    for act_order in (False, True):
        res = gptq_quantize(w, _hessian(x), bits=4, group_size=16, block_size=32, act_order=act_order)
        err_gptq = torch.linalg.norm(x @ w.T - x @ res.weight.T)
        err_rtn = torch.linalg.norm(x @ w.T - x @ rtn.T)
        assert err_gptq < 0.95 * err_rtn, (act_order, float(err_gptq), float(err_rtn))


def test_result_is_on_the_quantization_grid() -> None:
    x = _calibration()
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    for sym in (True, False):
        res = gptq_quantize(w, _hessian(x), bits=4, group_size=32, symmetric=sym, act_order=True)
        qmin, qmax = qrange(4)
        assert res.q.dtype == torch.int8 and int(res.q.min()) >= qmin and int(res.q.max()) <= qmax
        assert res.scale.shape == res.zero.shape == (16, 2)
        assert torch.allclose(dequantize(res.q, res.scale, res.zero, 32), res.weight, atol=1e-6)


def test_identity_hessian_reduces_to_rtn() -> None:
    # H = I: the inverse's Cholesky factor is diagonal, so no error is propagated and every
    # column is plainly rounded with the (static) group scales
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(4))
    res = gptq_quantize(w, torch.eye(32), bits=4, group_size=8, block_size=8)
    assert torch.allclose(res.weight, fake_quantize(w, 4, 8), atol=1e-6)


def test_dead_columns_are_zeroed() -> None:
    x = _calibration(width=32)
    x[:, 5] = 0.0  # an input that never fires: H_55 = 0
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(5))
    res = gptq_quantize(w, _hessian(x), bits=4, group_size=8)
    assert torch.all(res.weight[:, 5] == 0)
    assert torch.isfinite(res.weight).all()


def test_fixed_mask_keeps_pruned_weights_zero() -> None:
    x = _calibration()
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(6))
    mask = torch.rand(16, 64, generator=torch.Generator().manual_seed(7)) > 0.5
    res = gptq_quantize(w * mask, _hessian(x), bits=4, group_size=16, mask=mask)
    assert torch.all(res.weight[~mask] == 0)
    assert torch.all(res.q[~mask] == 0)  # symmetric: zero point 0


def test_damping_makes_a_singular_hessian_invertible() -> None:
    # rank-1 H: singular; with 1% of mean(diag) added, U^T U must equal (H + d I)^-1
    v = torch.arange(1.0, 5.0)
    H = torch.outer(v, v)
    U, used = hessian_inverse_cholesky(H, damp=0.01)
    d = 0.01 * float(torch.diagonal(H).mean())  # mean(1, 4, 9, 16) = 7.5 -> 0.075
    expected = torch.linalg.inv(H.double() + d * torch.eye(4, dtype=torch.float64))
    assert used == 0.01
    assert torch.allclose(U.T @ U, expected, atol=1e-8)
    assert torch.equal(U, torch.triu(U))
