"""Group-wise RTN, int4/int8 packing (compressed-tensors layout) and dequant-matmul parity."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.quant import (
    dequant_matmul,
    dequantize,
    fake_quantize,
    pack_int,
    pack_int4,
    pack_int8,
    quantize_rtn,
    unpack_int4,
    unpack_int8,
)

ROOT = Path(__file__).resolve().parents[2]


def test_symmetric_int4_hand_example() -> None:
    # absmax 1.5, scale = 1.5 / (15 / 2) = 0.2; w / scale = [-7.5, 0, 3.75, 7.5]
    # round half to even: -7.5 -> -8, 3.75 -> 4, 7.5 -> 8 clamped to qmax 7
    w = torch.tensor([[-1.5, 0.0, 0.75, 1.5]])
    q, scale, zero = quantize_rtn(w, bits=4, group_size=4, symmetric=True)
    assert q.dtype == torch.int8 and q.tolist() == [[-8, 0, 4, 7]]
    assert torch.allclose(scale, torch.tensor([[0.2]]))
    assert zero.tolist() == [[0]]
    assert torch.allclose(dequantize(q, scale, zero, 4), torch.tensor([[-1.6, 0.0, 0.8, 1.4]]))


def test_asymmetric_int4_hand_example() -> None:
    # range [0, 3]: scale = 3 / 15 = 0.2, zero = round(-8 - 0 / 0.2) = -8
    # q = round(w / 0.2) - 8 = [0, 5, 10, 15] - 8; dequant (q - zero) * scale gives w back
    w = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    q, scale, zero = quantize_rtn(w, bits=4, group_size=4, symmetric=False)
    assert q.tolist() == [[-8, -3, 2, 7]]
    assert zero.tolist() == [[-8]]
    assert torch.allclose(dequantize(q, scale, zero, 4), w)


def test_groups_have_their_own_scales() -> None:
    # group 0 absmax 7.5 -> scale 1; group 1 absmax 0.75 -> scale 0.1
    w = torch.tensor([[7.5, -1.0, 2.0, 3.0, 0.75, 0.1, -0.2, 0.3]])
    _, scale, _ = quantize_rtn(w, bits=4, group_size=4)
    assert torch.allclose(scale, torch.tensor([[1.0, 0.1]]))


@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True), (8, False)])
def test_rtn_error_is_at_most_half_a_step(bits: int, symmetric: bool) -> None:
    torch.manual_seed(0)
    w = torch.randn(16, 128)
    q, scale, zero = quantize_rtn(w, bits, 32, symmetric)
    err = (w - dequantize(q, scale, zero, 32)).abs().reshape(16, 4, 32)
    # the clamped absmax element sits exactly half a step away: allow float rounding on top
    assert torch.all(err <= scale.unsqueeze(-1) / 2 * (1 + 1e-4))
    assert torch.equal(fake_quantize(w, bits, 32, symmetric), dequantize(q, scale, zero, 32))


def test_zero_stays_exactly_zero() -> None:
    # pruned weights must survive quantization: 0 is always on the grid
    torch.manual_seed(1)
    w = torch.rand(4, 64) + 0.5  # all positive, so an asymmetric range would not include 0 unless widened
    w[:, ::2] = 0.0
    for sym in (True, False):
        assert torch.all(fake_quantize(w, 4, 32, sym)[:, ::2] == 0)


def test_pack_int4_hand_example() -> None:
    # q = -8..-1 -> unsigned 0..7 -> nibble i holds i: 0x76543210 = 1985229328
    q = torch.arange(-8, 0, dtype=torch.int8).reshape(1, 8)
    assert pack_int4(q).tolist() == [[0x76543210]]
    # q = 7 everywhere -> 0xFFFFFFFF, which is -1 as int32
    assert pack_int4(torch.full((1, 8), 7, dtype=torch.int8)).tolist() == [[-1]]


def test_pack_int8_hand_example() -> None:
    # [-128, -127, 0, 127] -> bytes [0, 1, 128, 255] -> 0xFF800100 = 4286578944 - 2**32 = -8388352
    q = torch.tensor([[-128, -127, 0, 127]], dtype=torch.int8)
    assert pack_int8(q).tolist() == [[-8388352]]


def test_pack_round_trips_every_value() -> None:
    q4 = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 4)  # [3, 64]
    p4 = pack_int4(q4)
    assert p4.dtype == torch.int32 and p4.shape == (3, 8)
    assert torch.equal(unpack_int4(p4), q4)
    q8 = torch.arange(-128, 128, dtype=torch.int8).reshape(2, 128)
    assert pack_int8(q8).shape == (2, 32)
    assert torch.equal(unpack_int8(pack_int8(q8)), q8)


def test_pack_matches_compressed_tensors_layout() -> None:
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    torch.manual_seed(2)
    for bits in (4, 8):
        q = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (5, 64), dtype=torch.int8)
        assert torch.equal(pack_int(q, bits), pack_to_int32(q, bits))


def test_pack_rejects_out_of_range_and_ragged() -> None:
    with pytest.raises(ValueError, match="range"):
        pack_int4(torch.full((1, 8), 8, dtype=torch.int8))
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_int4(torch.zeros(1, 12, dtype=torch.int8))


@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True)])
def test_dequant_matmul_equals_matmul_with_dequantized_weight(bits: int, symmetric: bool) -> None:
    torch.manual_seed(3)
    w = torch.randn(40, 128)
    q, scale, zero = quantize_rtn(w, bits, 32, symmetric)
    packed = pack_int(q, bits)
    z = None if symmetric else zero
    x = torch.randn(2, 3, 128)
    expected = x @ dequantize(q, scale, zero, 32).T
    ref = dequant_matmul(x, packed, scale, z, 32, bits, impl="reference")
    fast = dequant_matmul(x, packed, scale, z, 32, bits, impl="torch")
    assert ref.shape == (2, 3, 40)
    assert torch.allclose(ref, expected, atol=1e-5)
    assert torch.allclose(fast, ref, atol=1e-5)


def test_dequant_matmul_triton_kernel_in_interpreter() -> None:
    code = (
        "import torch\n"
        "from kernels.quant import quantize_rtn, pack_int, dequant_matmul\n"
        "torch.manual_seed(0)\n"
        "for bits, sym, g in [(4, True, 32), (4, False, 64), (8, False, 128)]:\n"
        "    w = torch.randn(70, 128)\n"
        "    q, s, z = quantize_rtn(w, bits, g, sym)\n"
        "    p = pack_int(q, bits)\n"
        "    x = torch.randn(5, 128)\n"
        "    zz = None if sym else z\n"
        "    got = dequant_matmul(x, p, s, zz, g, bits, impl='triton')\n"
        "    ref = dequant_matmul(x, p, s, zz, g, bits, impl='reference')\n"
        "    assert torch.allclose(got, ref, atol=1e-4), (bits, sym, (got - ref).abs().max())\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"


def test_quant_imports_without_triton() -> None:
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from kernels.quant import HAS_TRITON, pack_int4, quantize_rtn, dequant_matmul\n"
        "assert not HAS_TRITON\n"
        "q, s, z = quantize_rtn(torch.eye(8), 4, 8)\n"
        "print([round(v, 4) for v in dequant_matmul(torch.ones(1, 8), pack_int4(q), s, None, 8, 4)[0].tolist()])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    # row i of eye(8): scale 1/7.5, the 1 maps to 7.5 -> 8 -> clamped 7, so W_ii = 7/7.5 = 0.9333;
    # x = ones picks each row's sum
    assert out.stdout.strip() == str([0.9333] * 8)
