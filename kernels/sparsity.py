"""Pruning masks: N:M (2:4) and unstructured, plus the CUDA semi-structured conversion.

Every mask function keeps the *largest* scores. Ties are broken by position (the earlier
column wins) in every implementation, so the reference, the vectorised torch path and the
Triton kernel return identical masks, not just masks of equal quality.

Triton is optional: this module imports without it; the Triton kernel is used for CUDA
tensors (or CPU tensors under ``TRITON_INTERPRET=1``) when triton is importable.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

from kernels._triton import HAS_TRITON, tl, triton  # noqa: F401

Impl = Literal["auto", "reference", "torch", "triton"]


def triton_usable(t: torch.Tensor) -> bool:
    """Triton runs on CUDA tensors, or on CPU tensors through its interpreter."""
    if not HAS_TRITON:
        return False
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def _check_nm(scores: torch.Tensor, n: int, m: int) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [out, in], got shape {tuple(scores.shape)}")
    if not 0 < n <= m:
        raise ValueError(f"need 0 < n <= m, got n={n}, m={m}")
    if scores.shape[1] % m:
        raise ValueError(f"input width {scores.shape[1]} is not divisible by m={m}")


def nm_mask_reference(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Plain loop over groups (slow; for tests on small tensors)."""
    _check_nm(scores, n, m)
    rows, cols = scores.shape
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    vals = scores.detach().float().cpu().tolist()
    for r in range(rows):
        for g0 in range(0, cols, m):
            group = vals[r][g0 : g0 + m]
            order = sorted(range(m), key=lambda j: (-group[j], j))
            for j in order[:n]:
                mask[r, g0 + j] = True
    return mask.to(scores.device)


def _nm_mask_torch(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    groups = scores.detach().reshape(-1, m)
    # stable descending sort keeps the earlier index first among equal scores
    keep = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, keep, True)
    return mask.reshape(scores.shape)


if HAS_TRITON:

    @triton.jit
    def _nm_mask_kernel(s_ptr, out_ptr, n_groups, N: tl.constexpr, M: tl.constexpr, BLOCK: tl.constexpr):
        # one row of the tile = one group of M consecutive input columns
        offs_g = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        gmask = offs_g < n_groups
        cols = tl.arange(0, M)
        ptrs = offs_g[:, None] * M + cols[None, :]
        tile = tl.load(s_ptr + ptrs, mask=gmask[:, None], other=0.0)
        rank = tl.zeros([BLOCK, M], dtype=tl.int32)
        for k in tl.static_range(M):
            sk = tl.load(s_ptr + offs_g * M + k, mask=gmask, other=0.0)
            beats = (sk[:, None] > tile) | ((sk[:, None] == tile) & (k < cols[None, :]))
            rank += beats.to(tl.int32)
        tl.store(out_ptr + ptrs, (rank < N).to(tl.int8), mask=gmask[:, None])


def _nm_mask_triton(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    if m & (m - 1):
        raise ValueError(f"the Triton N:M kernel needs m to be a power of two, got {m}")
    s = scores.detach().float().contiguous()
    out = torch.empty(s.shape, dtype=torch.int8, device=s.device)
    n_groups = s.numel() // m
    block = 256
    _nm_mask_kernel[(triton.cdiv(n_groups, block),)](s, out, n_groups, N=n, M=m, BLOCK=block)
    return out.bool()


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4, impl: Impl = "auto") -> torch.Tensor:
    """Boolean mask [O, I] keeping the n largest scores in each group of m along the input dim."""
    _check_nm(scores, n, m)
    if impl == "reference":
        return nm_mask_reference(scores, n, m)
    if impl == "triton" or (impl == "auto" and triton_usable(scores)):
        return _nm_mask_triton(scores, n, m)
    return _nm_mask_torch(scores, n, m)


def _n_pruned(count: int, sparsity: float) -> int:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return int(round(count * sparsity))


def unstructured_mask_reference(scores: torch.Tensor, sparsity: float, per_row: bool = True) -> torch.Tensor:
    """Row by row (or whole-matrix) stable sort; prunes the round(sparsity * count) smallest."""
    flat_groups = scores.detach().float().cpu()
    if not per_row:
        flat_groups = flat_groups.reshape(1, -1)
    mask = torch.ones(flat_groups.shape, dtype=torch.bool)
    k = _n_pruned(flat_groups.shape[1], sparsity)
    for r in range(flat_groups.shape[0]):
        row = flat_groups[r].tolist()
        order = sorted(range(len(row)), key=lambda j: (row[j], -j))  # smallest first; later index loses ties
        for j in order[:k]:
            mask[r, j] = False
    return mask.reshape(scores.shape).to(scores.device)


def unstructured_mask(
    scores: torch.Tensor, sparsity: float, per_row: bool = True, impl: Impl = "auto"
) -> torch.Tensor:
    """Keep the largest scores; exactly round(sparsity * count) entries pruned per row (or per matrix).

    ``per_row=True`` is Wanda's comparison group (each output row separately);
    ``per_row=False`` compares all weights of the layer (classic magnitude pruning).
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [out, in], got shape {tuple(scores.shape)}")
    if impl == "reference":
        return unstructured_mask_reference(scores, sparsity, per_row)
    groups = scores.detach() if per_row else scores.detach().reshape(1, -1)
    k = _n_pruned(groups.shape[1], sparsity)
    mask = torch.ones(groups.shape, dtype=torch.bool, device=scores.device)
    if k:
        # descending stable sort: the kept entries are the first (count - k); ties keep the earlier index
        order = torch.sort(groups, dim=1, descending=True, stable=True).indices
        mask.scatter_(1, order[:, groups.shape[1] - k :], False)
    return mask.reshape(scores.shape)


def is_nm_sparse(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every group of m consecutive input weights has at most n non-zeros."""
    if weight.shape[-1] % m:
        return False
    nonzero = (weight.reshape(-1, m) != 0).sum(dim=1)
    return bool((nonzero <= n).all())


def to_semi_structured(weight: torch.Tensor):
    """Convert a 2:4-pruned weight to ``torch.sparse.SparseSemiStructuredTensor`` for fast CUDA matmuls.

    PyTorch's semi-structured kernels exist only on CUDA (sm80+): the conversion refuses CPU
    tensors, so on CPU a pruned model is served dense with zeros (as vLLM does today).
    """
    if not weight.is_cuda:
        raise ValueError(
            "to_sparse_semi_structured needs a CUDA tensor (PyTorch refuses CPU tensors); "
            "serve the pruned weight dense on CPU"
        )
    if not is_nm_sparse(weight, 2, 4):
        raise ValueError("weight is not 2:4 sparse along its input dimension")
    return torch.sparse.to_sparse_semi_structured(weight)
