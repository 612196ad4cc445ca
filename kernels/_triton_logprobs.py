"""Triton path for ``kernels.logprobs`` (imported lazily: triton is optional).

Forward is fully fused: each program owns BLOCK_N tokens, walks the vocabulary in
BLOCK_V tiles, computes the logits tile with ``tl.dot`` over BLOCK_H slices of the hidden
size, and folds it into an online logsumexp (running max m, s = sum e^{z-m},
a = sum e^{z-m} (z-m)), the target logit and hence the entropy H = log s - a / s.
No logits ever reach global memory.

Backward is matmul-bound, so it recomputes each token chunk's logits with torch
(cuBLAS), turns them into dL/dlogits in place with one Triton elementwise kernel, and
hands the two gradient matmuls back to torch. The gradient formula is derived in the
``kernels.logprobs`` docstring. For bf16/fp16 inputs the three matmuls run in that dtype on
tensor cores (fp32 accumulation; the softmax work stays fp32): fp32 matmuls there ran 5x slower
than a naive bf16 ``log_softmax`` on an H200 (``tests/bench/results/gpu.json``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.logprobs import _check_inputs, _compute_dtype, _flatten

__all__ = ["TritonLogProbs", "triton_token_logprobs"]


@triton.jit
def _fwd_kernel(
    h_ptr, w_ptr, t_ptr, logp_ptr, ent_ptr,
    N, V, H,
    stride_hn, stride_hh, stride_wv, stride_wh,
    inv_t,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    tgt = tl.load(t_ptr + rows, mask=rmask, other=0)
    # -1e30 rather than -inf: (m_old - m_new) * s stays 0 * finite on the first tile.
    m = tl.full([BLOCK_N], -1e30, tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    a = tl.zeros([BLOCK_N], tl.float32)
    zt = tl.zeros([BLOCK_N], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        cmask = cols < V
        acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
        for h0 in range(0, H, BLOCK_H):
            ks = h0 + tl.arange(0, BLOCK_H)
            kmask = ks < H
            hb = tl.load(
                h_ptr + rows[:, None] * stride_hn + ks[None, :] * stride_hh,
                mask=rmask[:, None] & kmask[None, :], other=0.0,
            )
            wb = tl.load(
                w_ptr + cols[None, :] * stride_wv + ks[:, None] * stride_wh,
                mask=cmask[None, :] & kmask[:, None], other=0.0,
            )
            acc = tl.dot(hb, wb, acc, input_precision=PRECISION)
        z = acc * inv_t
        m_new = tl.maximum(m, tl.max(tl.where(cmask[None, :], z, -1e30), 1))
        zs = tl.where(cmask[None, :], z - m_new[:, None], 0.0)
        e = tl.where(cmask[None, :], tl.exp(zs), 0.0)
        alpha = tl.exp(m - m_new)
        # a is kept relative to the current max: sum e'(z - m_new) = alpha (a + (m - m_new) s).
        a = alpha * (a + (m - m_new) * s) + tl.sum(e * zs, 1)
        s = alpha * s + tl.sum(e, 1)
        zt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), 1)
        m = m_new
    log_s = tl.log(s)
    tl.store(logp_ptr + rows, zt - (m + log_s), mask=rmask)
    tl.store(ent_ptr + rows, log_s - a / s, mask=rmask)


@triton.jit
def _grad_logits_kernel(
    z_ptr, t_ptr, gl_ptr, ge_ptr,
    C, V, stride_zc,
    inv_t,
    BLOCK_C: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """In place, per row: z (tempered logits) -> dL/dlogits = inv_t (gL 1[j=t] - p (gL + gH (log p + H))).

    lse and H are recomputed from these very logits (first sweep) rather than taken from
    the forward: the fused forward sums its dot products in another order, and a lse a
    few ulps off makes sum_j p_j != 1, which the weight-sized gradient terms amplify.
    """
    rows = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = rows < C
    m = tl.full([BLOCK_C], -1e30, tl.float32)
    s = tl.zeros([BLOCK_C], tl.float32)
    a = tl.zeros([BLOCK_C], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = rmask[:, None] & (cols[None, :] < V)
        z = tl.load(z_ptr + rows[:, None] * stride_zc + cols[None, :], mask=mask, other=-1e30)
        m_new = tl.maximum(m, tl.max(z, 1))
        zs = tl.where(mask, z - m_new[:, None], 0.0)
        e = tl.where(mask, tl.exp(zs), 0.0)
        alpha = tl.exp(m - m_new)
        a = alpha * (a + (m - m_new) * s) + tl.sum(e * zs, 1)
        s = alpha * s + tl.sum(e, 1)
        m = m_new
    s = tl.where(rmask, s, 1.0)
    log_s = tl.log(s)
    lse = tl.where(rmask, m + log_s, 0.0)  # rows past C: logp = 0, g = 0, nothing overflows
    ent = log_s - a / s
    gl = tl.load(gl_ptr + rows, mask=rmask, other=0.0)
    ge = tl.load(ge_ptr + rows, mask=rmask, other=0.0)
    tgt = tl.load(t_ptr + rows, mask=rmask, other=0)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        mask = rmask[:, None] & (cols[None, :] < V)
        ptrs = z_ptr + rows[:, None] * stride_zc + cols[None, :]
        logp = tl.load(ptrs, mask=mask, other=0.0) - lse[:, None]
        p = tl.exp(logp)
        g = tl.where(cols[None, :] == tgt[:, None], gl[:, None], 0.0)
        g -= p * (gl[:, None] + ge[:, None] * (logp + ent[:, None]))
        tl.store(ptrs, g * inv_t, mask=mask)


class TritonLogProbs(torch.autograd.Function):
    """Fused Triton forward, chunked cuBLAS + Triton backward. Inputs: hidden [N, H], weight [V, H]."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, chunk_size: int,
        block_n: int = 64, block_v: int = 128, block_h: int = 64, num_warps: int = 4, num_stages: int = 3,
    ) -> tuple[Tensor, Tensor]:
        n, hdim = hidden.shape
        v = weight.shape[0]
        tg = targets.long().contiguous()
        inv_t = 1.0 / float(temperature)
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        ent = torch.empty_like(logp)
        # fp32 operands: IEEE dot for parity with the reference (tf32 would cost ~1e-3).
        precision = "ieee" if hidden.dtype == torch.float32 else "tf32"
        _fwd_kernel[(triton.cdiv(n, block_n),)](
            hidden, weight, tg, logp, ent,
            n, v, hdim,
            hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
            inv_t,
            BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h, PRECISION=precision,
            **({"num_warps": num_warps, "num_stages": num_stages} if hidden.is_cuda else {}),
        )
        ctx.save_for_backward(hidden, weight, tg)
        ctx.inv_t = inv_t
        ctx.chunk_size = chunk_size
        # Small row blocks keep the grid wide (chunk 1024 / 4 = 256 programs).
        ctx.grad_blocks = (min(4, block_n), min(1024, 8 * block_v))
        ctx.set_materialize_grads(False)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp: Tensor | None, g_ent: Tensor | None):  # type: ignore[override]
        hidden, weight, tg = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        nones = (None,) * 8
        if (g_logp is None and g_ent is None) or not (need_h or need_w):
            return None, None, *nones
        n = hidden.shape[0]
        inv_t = ctx.inv_t
        lowp = weight.is_cuda and weight.dtype in (torch.bfloat16, torch.float16)
        w = weight if lowp else weight.float()
        gl = g_logp.float().contiguous() if g_logp is not None else torch.zeros_like(tg, dtype=torch.float32)
        ge = g_ent.float().contiguous() if g_ent is not None else torch.zeros_like(tg, dtype=torch.float32)
        grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        block_c, block_v = ctx.grad_blocks
        for s in range(0, n, ctx.chunk_size):
            e = min(s + ctx.chunk_size, n)
            h = hidden[s:e] if lowp else hidden[s:e].float()
            z = torch.mm(h, w.t()).float() * inv_t
            _grad_logits_kernel[(triton.cdiv(e - s, block_c),)](
                z, tg[s:e], gl[s:e], ge[s:e],
                e - s, w.shape[0], z.stride(0),
                inv_t,
                BLOCK_C=block_c, BLOCK_V=block_v,
            )
            g = z.to(w.dtype) if lowp else z
            if need_h:
                grad_h[s:e] = g @ w
            if need_w:
                grad_w.add_(g.t() @ h) if lowp else grad_w.addmm_(g.t(), h)
            del z, g
        return (
            grad_h.to(hidden.dtype) if need_h else None,
            grad_w.to(weight.dtype) if need_w else None,
            *nones,
        )


# fastest correct forward tiles of a 48-config sweep on an H200 (tests/bench/results/gpu_sweep.json)
FWD_CONFIG = {"block_n": 64, "block_v": 256, "block_h": 64, "num_warps": 8, "num_stages": 3}


def triton_token_logprobs(
    hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float = 1.0, chunk_size: int = 1024,
    config: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """(logp, entropy) per token via Triton; fp32 outputs, grads in the input dtypes."""
    _check_inputs(hidden, weight, targets, temperature)
    if _compute_dtype(hidden.dtype) == torch.float64:
        raise ValueError("the Triton path computes in fp32; use impl='chunked' for fp64")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a dtype for tl.dot")
    h, t, lead = _flatten(hidden, targets)
    c = {**FWD_CONFIG, **(config or {})}
    logp, ent = TritonLogProbs.apply(
        h, weight, t, float(temperature), int(chunk_size),
        c["block_n"], c["block_v"], c["block_h"], c["num_warps"], c["num_stages"],
    )  # fmt: skip
    return logp.view(lead), ent.view(lead)
