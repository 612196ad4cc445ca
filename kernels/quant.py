"""Weight-only integer quantization: group-wise RTN, int4/int8 packing and dequant-matmul.

Conventions (chosen to match compressed-tensors, so our packed tensors are what vLLM loads):
- quantized values ``q`` are *signed* int8 in ``[-2**(b-1), 2**(b-1) - 1]``; zero points are in
  the same signed range and are all 0 for symmetric quantization;
- ``w ~= (q - zero) * scale`` with one scale / zero per (output row, group of ``group_size``
  consecutive input columns): ``scale`` and ``zero`` have shape ``[O, I // group_size]``;
- symmetric scale = absmax / ((qmax - qmin) / 2), asymmetric scale = (max - min) / (qmax - qmin)
  with the range widened to include 0 (so pruned zeros stay exactly zero);
- packing stores ``q + 2**(b-1)`` as unsigned fields, element ``i`` of a row at bit
  ``(i * b) % 32`` of int32 word ``i * b // 32`` (8 int4 or 4 int8 per word).

Triton is optional: ``dequant_matmul`` uses a Triton kernel for CUDA tensors (or CPU tensors
under ``TRITON_INTERPRET=1``) and a chunked torch path otherwise.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
import torch.nn.functional as F

from kernels._triton import HAS_TRITON, tl, triton  # noqa: F401

Impl = Literal["auto", "reference", "torch", "triton"]


def qrange(bits: int) -> tuple[int, int]:
    """Signed integer range of a ``bits``-wide quantized value."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(w.shape)}")
    if group_size <= 0 or w.shape[1] % group_size:
        raise ValueError(f"input width {w.shape[1]} is not divisible by group_size={group_size}")
    return w.reshape(w.shape[0], w.shape[1] // group_size, group_size)


def compute_qparams(
    w: torch.Tensor, bits: int, group_size: int, symmetric: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max scale and zero point per (row, group): ``([O, G] float32, [O, G] int8)``."""
    g = _groups(w.detach().float(), group_size)
    lo = g.amin(dim=-1).clamp(max=0.0)
    hi = g.amax(dim=-1).clamp(min=0.0)
    qmin, qmax = qrange(bits)
    if symmetric:
        scale = torch.maximum(-lo, hi) / ((qmax - qmin) / 2)
    else:
        scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale == 0, torch.finfo(scale.dtype).eps, scale)
    if symmetric:
        zero = torch.zeros_like(scale, dtype=torch.int8)
    else:
        zero = torch.round(qmin - lo / scale).clamp(qmin, qmax).to(torch.int8)
    return scale, zero


def _expand(t: torch.Tensor, group_size: int) -> torch.Tensor:
    return t.repeat_interleave(group_size, dim=1)


def quantize_with_qparams(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int
) -> torch.Tensor:
    """``clamp(round(w / scale) + zero)`` as int8 (division, not a reciprocal, like compressed-tensors)."""
    qmin, qmax = qrange(bits)
    g = _groups(w.detach().float(), group_size)
    q = torch.round(g / scale.unsqueeze(-1)) + zero.unsqueeze(-1).float()
    return q.clamp(qmin, qmax).to(torch.int8).reshape(w.shape)


def quantize_rtn(
    w: torch.Tensor, bits: int, group_size: int, symmetric: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest group quantization: ``(q int8 [O, I], scale [O, G], zero int8 [O, G])``."""
    if bits not in (2, 3, 4, 8):
        raise ValueError(f"bits must be one of 2, 3, 4, 8, got {bits}")
    scale, zero = compute_qparams(w, bits, group_size, symmetric)
    return quantize_with_qparams(w, scale, zero, bits, group_size), scale, zero


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, group_size: int
) -> torch.Tensor:
    """``(q - zero) * scale`` in the scale's dtype, shape of ``q``."""
    g = _groups(q, group_size).to(scale.dtype)
    if zero is not None:
        g = g - zero.to(scale.dtype).unsqueeze(-1)
    return (g * scale.unsqueeze(-1)).reshape(q.shape)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int, symmetric: bool = True) -> torch.Tensor:
    """Quantize then dequantize, in ``w``'s dtype (what the model computes with after RTN)."""
    q, scale, zero = quantize_rtn(w, bits, group_size, symmetric)
    return dequantize(q, scale, zero, group_size).to(w.dtype)


# ---------------------------------------------------------------- activations (W8A8)


def quantize_activations_per_token(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric per-token quantization, as vLLM's ``scaled_int8_quant`` does it for a
    compressed-tensors W8A8 model: ``scale = absmax(token) / qmax``, ``q = round(x / scale)``
    (half to even) clamped to the signed range. Returns ``(q int8 [..., I], scale float32 [..., 1])``."""
    qmin, qmax = qrange(bits)
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True) / qmax
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero token stays zero
    q = torch.round(xf / scale).clamp(qmin, qmax).to(torch.int8)
    return q, scale


def fake_quantize_activations(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """What a W8A8 linear really multiplies: per-token quantized-then-dequantized inputs, in x's dtype."""
    q, scale = quantize_activations_per_token(x, bits)
    return (q.float() * scale).to(x.dtype)


def fake_quantize_activations_reference(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Token by token with Python scalars (slow; for tests)."""
    qmin, qmax = qrange(bits)
    rows = x.detach().float().reshape(-1, x.shape[-1])
    out = torch.empty_like(rows)
    for i, row in enumerate(rows):
        amax = float(row.abs().max())
        s = amax / qmax if amax > 0 else 1.0
        out[i] = torch.tensor([min(max(round(v / s), qmin), qmax) * s for v in row.tolist()])
    return out.reshape(x.shape).to(x.dtype)


# ---------------------------------------------------------------- packing


def _per_word(bits: int) -> int:
    if bits not in (4, 8):
        raise ValueError(f"packing supports 4 or 8 bits, got {bits}")
    return 32 // bits


def pack_int(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack signed ``bits``-wide values along the last dim into int32 words (see module doc)."""
    per = _per_word(bits)
    if q.shape[-1] % per:
        raise ValueError(f"last dim {q.shape[-1]} must be a multiple of {per} to pack {bits}-bit values")
    qmin, qmax = qrange(bits)
    if q.numel() and (int(q.min()) < qmin or int(q.max()) > qmax):
        raise ValueError(f"values outside the signed {bits}-bit range [{qmin}, {qmax}]")
    u = (q.to(torch.int64) - qmin).reshape(*q.shape[:-1], q.shape[-1] // per, per)
    shifts = torch.arange(per, device=q.device, dtype=torch.int64) * bits
    word = (u << shifts).sum(dim=-1)  # disjoint bit fields: sum == bitwise or
    word = torch.where(word >= 2**31, word - 2**32, word)  # reinterpret as signed int32
    return word.to(torch.int32)


def unpack_int(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_int`: int32 words -> signed int8 values."""
    per = _per_word(bits)
    qmin, _ = qrange(bits)
    words = packed.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(per, device=packed.device, dtype=torch.int64) * bits
    u = (words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return (u + qmin).to(torch.int8).reshape(*packed.shape[:-1], packed.shape[-1] * per)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """8 signed int4 values per int32 word (compressed-tensors ``pack-quantized`` layout)."""
    return pack_int(q, 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    return unpack_int(packed, 4)


def pack_int8(q: torch.Tensor) -> torch.Tensor:
    """4 signed int8 values per int32 word (compressed-tensors ``pack-quantized`` layout)."""
    return pack_int(q, 8)


def unpack_int8(packed: torch.Tensor) -> torch.Tensor:
    return unpack_int(packed, 8)


# ---------------------------------------------------------------- dequant matmul


def dequant_matmul_reference(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    group_size: int,
    bits: int,
) -> torch.Tensor:
    """Unpack, dequantize the whole weight, then ``x @ W.T``."""
    w = dequantize(unpack_int(packed, bits), scale.float(), zero, group_size)
    return F.linear(x.float(), w).to(x.dtype)


def _dequant_matmul_torch(x, packed, scale, zero, group_size, bits, rows_per_chunk: int = 1024):
    # bounds the float copy of the weight to ``rows_per_chunk`` output rows at a time
    outs = []
    xf = x.float()
    for r0 in range(0, packed.shape[0], rows_per_chunk):
        sl = slice(r0, r0 + rows_per_chunk)
        z = None if zero is None else zero[sl]
        w = dequantize(unpack_int(packed[sl], bits), scale[sl].float(), z, group_size)
        outs.append(F.linear(xf, w))
    return torch.cat(outs, dim=-1).to(x.dtype)


if HAS_TRITON:

    @triton.jit
    def _dequant_matmul_kernel(
        x_ptr, p_ptr, s_ptr, z_ptr, y_ptr,
        M, N, K,
        stride_xm, stride_xk, stride_pn, stride_pk, stride_sn, stride_sg, stride_zn, stride_zg,
        stride_ym, stride_yn,
        GROUP_SIZE: tl.constexpr, BITS: tl.constexpr, HAS_ZERO: tl.constexpr, LOW_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        PER_WORD: tl.constexpr = 32 // BITS
        QMIN: tl.constexpr = -(1 << (BITS - 1))
        MASK: tl.constexpr = (1 << BITS) - 1
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok = offs_m < M
        n_ok = offs_n < N
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            x = tl.load(
                x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                mask=m_ok[:, None] & k_ok[None, :], other=0.0,
            )
            wk_mask = k_ok[:, None] & n_ok[None, :]
            words = tl.load(
                p_ptr + offs_n[None, :] * stride_pn + (offs_k // PER_WORD)[:, None] * stride_pk,
                mask=wk_mask, other=0,
            )
            shift = (offs_k % PER_WORD) * BITS
            q = ((words >> shift[:, None]) & MASK) + QMIN  # [BLOCK_K, BLOCK_N] signed ints
            grp = offs_k // GROUP_SIZE
            s = tl.load(s_ptr + offs_n[None, :] * stride_sn + grp[:, None] * stride_sg, mask=wk_mask, other=0.0)
            if HAS_ZERO:
                z = tl.load(z_ptr + offs_n[None, :] * stride_zn + grp[:, None] * stride_zg, mask=wk_mask, other=0)
                q = q - z.to(tl.int32)
            w = q.to(tl.float32) * s.to(tl.float32)
            if LOW_PRECISION:  # fp16/bf16 activations: tensor-core dot, fp32 accumulation
                acc += tl.dot(x, w.to(x.dtype))
            else:
                acc += tl.dot(x.to(tl.float32), w, input_precision="ieee")
        tl.store(
            y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
            acc.to(y_ptr.dtype.element_ty),
            mask=m_ok[:, None] & n_ok[None, :],
        )


def dequant_launch_config(m: int) -> dict[str, int]:
    """Tile sizes by the number of activation rows (tokens): decode-sized inputs want many narrow
    column tiles so every SM has work; large batches want tall tiles so each dequantized weight tile
    feeds many rows (the dequantization runs on CUDA cores and otherwise bounds the kernel).
    Picked from the sweep in ``tests/bench/bench_gpu.py --sweep`` on an H200."""
    if m <= 16:
        return {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 256, "num_warps": 4, "num_stages": 2}
    if m <= 256:
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 3}
    return {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3}


# Above this many rows the fused kernel loses to "dequantize the weight once, then cuBLAS" on an
# H200 (its per-element unpacking runs on CUDA cores): 1.1 vs 0.9 ms at 256 rows, 10.9 vs 3.5 ms at
# 4096 (tests/bench/results/gpu.json). ``auto`` uses it for decode-sized inputs only.
TRITON_MAX_ROWS = 64


def _dequant_matmul_triton(x, packed, scale, zero, group_size, bits, config: dict[str, int] | None = None):
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    M, K = x2.shape
    N = packed.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    cfg = dict(config or dequant_launch_config(M))
    if not x.is_cuda:  # the interpreter: small tiles keep CPU tests quick; no warps or stages there
        cfg = dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=min(64, group_size) if group_size >= 16 else 16)
    z = zero if zero is not None else scale  # placeholder pointer, never read
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(N, cfg["BLOCK_N"]))
    _dequant_matmul_kernel[grid](
        x2, packed, scale, z, y, M, N, K,
        x2.stride(0), x2.stride(1), packed.stride(0), packed.stride(1),
        scale.stride(0), scale.stride(1), z.stride(0), z.stride(1), y.stride(0), y.stride(1),
        GROUP_SIZE=group_size, BITS=bits, HAS_ZERO=zero is not None,
        LOW_PRECISION=x.dtype in (torch.float16, torch.bfloat16),
        **cfg,
    )  # fmt: skip
    return y.reshape(*lead, N)


def dequant_matmul(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor | None,
    group_size: int,
    bits: int,
    impl: Impl = "auto",
) -> torch.Tensor:
    """``x @ dequantize(unpack(packed)).T`` without keeping a float copy of the whole weight.

    x: [..., I]; packed: int32 [O, I * bits / 32]; scale, zero: [O, I / group_size].
    """
    if packed.shape[1] * (32 // bits) != x.shape[-1]:
        raise ValueError(f"x has {x.shape[-1]} features but the packed weight holds {packed.shape[1] * (32 // bits)}")
    if impl == "reference":
        return dequant_matmul_reference(x, packed, scale, zero, group_size, bits)
    rows = x.numel() // max(x.shape[-1], 1)
    use_triton = HAS_TRITON and (
        (x.is_cuda and rows <= TRITON_MAX_ROWS) or (not x.is_cuda and os.environ.get("TRITON_INTERPRET") == "1")
    )
    if impl == "triton" or (impl == "auto" and use_triton):
        return _dequant_matmul_triton(x, packed, scale, zero, group_size, bits)
    return _dequant_matmul_torch(x, packed, scale, zero, group_size, bits)
