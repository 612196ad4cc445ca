"""Per-token log-probabilities and entropies without materialising ``[N, V]`` logits.

The RL trainer needs, for every response token, ``log p(target | context)`` and the
entropy of the next-token distribution. With SmolLM2 (V=49152) and N=8192 tokens the
fp32 logits alone are 1.6 GB, and ``log_softmax`` + autograd keep several such tensors
alive. The paths here keep only O(chunk_size x V) live at once:

* ``token_logprobs_reference``: plain ``log_softmax``; the ground truth for tests.
* ``chunked_token_logprobs``: torch, loops over token chunks; forward keeps per-token
  ``lse`` and entropy, backward recomputes each chunk's logits.
* Triton (``kernels/_triton_logprobs.py``): fused matmul tile + online logsumexp +
  target gather + entropy forward; backward like the chunked path with a Triton
  kernel for the per-chunk gradient of the logits.
* ``token_logprobs``: dispatcher (Triton on CUDA when importable, else chunked).

Gradient (z = logits / T, p = softmax(z), lse = logsumexp(z), log p = z - lse):

* logp_i = z_{i,t} - lse_i, so d logp_i / d z_{ij} = 1[j = t] - p_{ij}.
* H_i = -sum_j p_j log p_j = lse - sum_j p_j z_j. With dp_k/dz_j = p_k (1[k=j] - p_j):
  dH/dz_j = p_j - [p_j + p_j z_j - p_j sum_k p_k z_k] = -p_j (z_j - E_p[z])
  and z_j - E_p[z] = (z_j - lse) + (lse - E_p[z]) = log p_j + H, hence
  dH/dz_j = -p_j (log p_j + H).
* For upstream grads gL (of logp) and gH (of entropy):
  dL/dz_j = gL (1[j=t] - p_j) - gH p_j (log p_j + H) = gL 1[j=t] - p_j (gL + gH (log p_j + H)),
  and dL/dlogits = dL/dz / T; dL/dhidden = dL/dlogits @ W, dL/dW = dL/dlogits^T @ hidden.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch import Tensor

Impl = Literal["auto", "reference", "chunked", "triton"]

__all__ = [
    "ChunkedLogProbs",
    "chunked_token_logprobs",
    "token_logprobs",
    "token_logprobs_reference",
    "triton_available",
]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64 (for exact tests); everything else is computed in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_inputs(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float) -> None:
    if hidden.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise ValueError(f"hidden [..., H] and weight [V, H] disagree: {tuple(hidden.shape)} vs {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets shape {tuple(targets.shape)} must equal hidden.shape[:-1] {tuple(hidden.shape[:-1])}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def token_logprobs_reference(
    hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Ground truth: full logits + ``log_softmax``. Returns (logp, entropy), fp32 (fp64 for fp64 inputs)."""
    _check_inputs(hidden, weight, targets, temperature)
    cd = _compute_dtype(hidden.dtype)
    logits = hidden.to(cd) @ weight.to(cd).T / temperature
    logsm = torch.log_softmax(logits, dim=-1)
    logp = logsm.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    return logp, entropy


def _chunk_stats(z: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(logp, entropy, lse) of one chunk of tempered logits ``z`` [c, V]; overwrites ``z``.

    Works on z - max so the entropy (log s - sum e (z-m) / s) has no cancellation
    between two large numbers.
    """
    m = z.amax(dim=-1, keepdim=True)
    z.sub_(m)
    zt = z.gather(1, tgt.unsqueeze(1)).squeeze(1)
    e = torch.exp(z)
    s = e.sum(-1)
    ez = torch.bmm(e.unsqueeze(1), z.unsqueeze(2)).view(-1)  # row-wise dot, no [c, V] temp
    log_s = torch.log(s)
    return zt - log_s, log_s - ez / s, m.squeeze(1) + log_s


class ChunkedLogProbs(torch.autograd.Function):
    """Chunked (logp, entropy) with a recomputing backward; see the module docstring for the maths."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, chunk_size: int
    ) -> tuple[Tensor, Tensor]:
        cd = _compute_dtype(hidden.dtype)
        n = hidden.shape[0]
        inv_t = 1.0 / float(temperature)
        w = weight.to(cd)
        tg = targets.long()
        logp = torch.empty(n, dtype=cd, device=hidden.device)
        ent = torch.empty_like(logp)
        lse = torch.empty_like(logp)
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            z = torch.mm(hidden[s:e].to(cd) * inv_t, w.t())
            logp[s:e], ent[s:e], lse[s:e] = _chunk_stats(z, tg[s:e])
            del z
        ctx.save_for_backward(hidden, weight, tg, lse, ent)
        ctx.inv_t = inv_t
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp: Tensor | None, g_ent: Tensor | None):  # type: ignore[override]
        hidden, weight, tg, lse, ent = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (g_logp is None and g_ent is None) or not (need_h or need_w):
            return None, None, None, None, None
        cd = lse.dtype
        inv_t = ctx.inv_t
        n = hidden.shape[0]
        w = weight.to(cd)
        gl = g_logp.to(cd) if g_logp is not None else None
        ge = g_ent.to(cd) if g_ent is not None else None
        grad_h = torch.empty(hidden.shape, dtype=cd, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=cd, device=weight.device) if need_w else None
        for s in range(0, n, ctx.chunk_size):
            e = min(s + ctx.chunk_size, n)
            h = hidden[s:e].to(cd)
            buf = torch.mm(h * inv_t, w.t())  # z
            buf.sub_(lse[s:e, None])  # log p
            # buf <- p * (gL + gH (log p + H)): the dense part of -dL/dz.
            if ge is not None:
                p = torch.exp(buf)
                buf.add_(ent[s:e, None]).mul_(ge[s:e, None])
                if gl is not None:
                    buf.add_(gl[s:e, None])
                buf.mul_(p)
                del p
            else:
                buf.exp_().mul_(gl[s:e, None])
            # dL/dlogits = inv_t * (gL onehot - buf); the onehot part is a gather / scatter.
            if need_h:
                gh = torch.mm(buf, w).mul_(-inv_t)
                if gl is not None:
                    gh.add_(w.index_select(0, tg[s:e]) * (gl[s:e, None] * inv_t))
                grad_h[s:e] = gh
            if need_w:
                grad_w.addmm_(buf.t(), h, alpha=-inv_t)
                if gl is not None:
                    grad_w.index_add_(0, tg[s:e], h * (gl[s:e, None] * inv_t))
            del buf
        return (
            grad_h.to(hidden.dtype) if need_h else None,
            grad_w.to(weight.dtype) if need_w else None,
            None,
            None,
            None,
        )


def _flatten(hidden: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, torch.Size]:
    lead = hidden.shape[:-1]
    return hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1), lead


def chunked_token_logprobs(
    hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float = 1.0, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """(logp, entropy) per token with O(chunk_size x V) extra memory. ``hidden`` may be [..., H]."""
    _check_inputs(hidden, weight, targets, temperature)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    h, t, lead = _flatten(hidden, targets)
    logp, ent = ChunkedLogProbs.apply(h, weight, t, float(temperature), int(chunk_size))
    return logp.view(lead), ent.view(lead)


def triton_available() -> bool:
    """True when triton imports (it need not be installed for the torch paths)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    impl: Impl = "auto",
) -> tuple[Tensor, Tensor]:
    """Dispatcher: ``auto`` picks Triton for CUDA tensors when triton imports, else chunked torch."""
    if impl == "auto":
        impl = "triton" if hidden.is_cuda and triton_available() else "chunked"
    if impl == "reference":
        return token_logprobs_reference(hidden, weight, targets, temperature)
    if impl == "chunked":
        return chunked_token_logprobs(hidden, weight, targets, temperature, chunk_size)
    if impl == "triton":
        if not hidden.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before importing triton)")
        from kernels._triton_logprobs import triton_token_logprobs

        return triton_token_logprobs(hidden, weight, targets, temperature, chunk_size)
    raise ValueError(f"impl must be one of 'auto', 'reference', 'chunked', 'triton'; got {impl!r}")
