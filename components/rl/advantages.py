"""Group-relative advantages for GRPO-family training.

Rewards arrive as ``[B, G]``: B prompts, G sampled completions each. Each completion's advantage is
its reward relative to its own group, so prompts of different difficulty are comparable.
Estimators are registered functions (``@register_advantage("name")``), picked by ``rl_train.advantage``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

AdvantageFn = Callable[[Tensor, bool, float], Tensor]  # (rewards [B, G] float, std_normalize, eps) -> [B, G]
ADVANTAGES: dict[str, AdvantageFn] = {}


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Register an advantage estimator under ``name`` (usable as ``rl_train.advantage: name``)."""

    def deco(fn: AdvantageFn) -> AdvantageFn:
        if name in ADVANTAGES and ADVANTAGES[name] is not fn:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGES[name] = fn
        return fn

    return deco


def get_advantage(name: str) -> AdvantageFn:
    if name not in ADVANTAGES:
        raise ValueError(f"unknown advantage mode {name!r}; allowed: {', '.join(sorted(ADVANTAGES))}")
    return ADVANTAGES[name]


@register_advantage("grpo")
def grpo_advantage(r: Tensor, std_normalize: bool, eps: float) -> Tensor:
    """``(r - mean_g) / (std_g + eps)`` when ``std_normalize``, else ``r - mean_g``. ``std_g`` is the
    *population* std: advantages then have unit variance within a group, and G=2 with rewards
    {0, 1} gives +-1 (not +-0.707)."""
    centered = r - r.mean(dim=1, keepdim=True)
    if not std_normalize:
        return centered
    return centered / (r.std(dim=1, unbiased=False, keepdim=True) + eps)


@register_advantage("drgrpo")
def drgrpo_advantage(r: Tensor, std_normalize: bool, eps: float) -> Tensor:
    """``r - mean_g`` always (Dr. GRPO: dividing by the std up-weights nearly-solved and
    nearly-failed prompts); ``std_normalize`` is ignored."""
    return r - r.mean(dim=1, keepdim=True)


@register_advantage("loo")
def loo_advantage(r: Tensor, std_normalize: bool, eps: float) -> Tensor:
    """RLOO: ``r_i - mean of the other G-1 rewards`` = ``G/(G-1) * (r_i - mean_g)``; never
    std-normalised; zeros when G == 1 (no other sample to compare with)."""
    g = r.shape[1]
    if g < 2:
        return torch.zeros_like(r)
    return (r - r.mean(dim=1, keepdim=True)) * (g / (g - 1))


def group_advantages(
    rewards: Tensor,
    mode: str = "grpo",
    std_normalize: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """Per-completion advantages ``[B, G]`` from rewards ``[B, G]`` by the registered estimator
    ``mode`` (grpo, drgrpo, loo, ...). A group whose rewards are all equal gets zero advantages in
    every built-in mode."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    return get_advantage(mode)(rewards.float(), std_normalize, eps)


def batch_normalize(
    adv: Tensor, mask: Tensor | None = None, eps: float = 1e-6, center: bool = True
) -> Tensor:
    """Normalise advantages by statistics of the whole batch (DLER-style), not per group.

    Per-group std blows up groups with tiny reward spread; one batch-wide std keeps the relative
    scale between groups. Only entries where ``mask`` is true enter the mean/std (population std);
    masked-out entries come back as 0. ``center=False`` only rescales (group-centred advantages
    already have zero batch mean).
    """
    a = adv.float()
    m = torch.ones_like(a, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    if m.shape != a.shape:
        raise ValueError(f"mask shape {tuple(m.shape)} != advantages shape {tuple(a.shape)}")
    n = m.sum()
    if n == 0:
        return torch.zeros_like(a)
    mf = m.float()
    mean = (a * mf).sum() / n
    var = (((a - mean) * mf) ** 2).sum() / n
    out = (a - mean) if center else a
    return torch.where(m, out / (var.sqrt() + eps), torch.zeros_like(a))


def zero_variance_groups(rewards: Tensor, atol: float = 0.0) -> Tensor:
    """``[B]`` bool: groups whose rewards all lie within ``atol`` (no learning signal; DAPO filters
    them out or resamples)."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    spread = rewards.max(dim=1).values - rewards.min(dim=1).values
    return spread <= atol
