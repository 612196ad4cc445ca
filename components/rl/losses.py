"""GRPO-family policy losses: GRPO, DAPO, Dr. GRPO and GSPO, with KL, entropy and TIS.

Shapes: ``logp``, ``old_logp``, ``mask`` (and the optional ``ref_logp``, ``behaviour_logp``,
``entropy``) are ``[B, T]`` over response tokens; ``advantages`` is ``[B]`` (one per sequence,
broadcast over its tokens) or ``[B, T]``. Padding positions may hold any value, even inf/nan: they
are masked *before* any exp, so they reach neither the loss nor the gradient.

The variants differ in two places only:
- the ratio: per token (grpo, dapo, drgrpo) or per sequence (gspo);
- the aggregation of per-token terms into a scalar (the KL and entropy terms use the same one):
  grpo/gspo: mean over each sequence's tokens, then mean over sequences;
  dapo: sum over all tokens / number of tokens in the batch (long answers weigh more);
  drgrpo: sum over each sequence's tokens / a constant length, then mean over sequences
  (no per-length bias).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor


class LossConfig(BaseModel):
    """Policy-loss options (part of the rl_train recipe)."""

    model_config = ConfigDict(extra="forbid")

    variant: Literal["grpo", "dapo", "drgrpo", "gspo"] = Field(
        "grpo", description="policy loss: grpo, dapo (token-level, clip-higher), drgrpo, gspo (sequence ratio)")
    clip_low: float = Field(0.2, ge=0, lt=1, description="ratio floor is 1 - clip_low")
    clip_high: float = Field(0.2, ge=0, description="ratio ceiling is 1 + clip_high (DAPO: 0.28)")
    gspo_clip_low: float = Field(3e-4, ge=0, lt=1, description="sequence-ratio clip for gspo")
    gspo_clip_high: float = Field(4e-4, ge=0, description="sequence-ratio ceiling for gspo")
    kl_coef: float = Field(0.0, ge=0, description="weight of the KL penalty to the reference policy (0: off)")
    kl_estimator: Literal["k1", "k3"] = Field(
        "k3", description="KL estimator: k1 (log ratio) or k3 (unbiased, non-negative)")
    entropy_coef: float = Field(0.0, ge=0, description="weight of the entropy bonus (0: off)")
    tis_cap: float | None = Field(
        2.0, gt=0, description="cap on exp(old_logp - behaviour_logp); None disables TIS"
    )
    drgrpo_norm_len: int | None = Field(
        None, gt=0, description="Dr. GRPO constant normaliser; None uses T (padded length)"
    )


def _aggregate(x: Tensor, mask: Tensor, variant: str, norm_len: int | None) -> Tensor:
    """Reduce per-token terms ``[B, T]`` to a scalar the way ``variant`` does (see module doc)."""
    xm = x * mask
    if variant == "dapo":
        return xm.sum() / mask.sum().clamp(min=1.0)
    if variant == "drgrpo":
        length = float(norm_len if norm_len is not None else x.shape[1])
        return (xm.sum(dim=1) / length).mean()
    # grpo / gspo: sequences with no tokens do not count in the mean over sequences.
    lengths = mask.sum(dim=1)
    per_seq = xm.sum(dim=1) / lengths.clamp(min=1.0)
    return per_seq.sum() / (lengths > 0).sum().clamp(min=1)


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: Literal["k1", "k3"] = "k3") -> Tensor:
    """Per-token estimate of KL(policy || reference) on tokens sampled from the policy.

    k1 = logp - ref (unbiased, can be negative); k3 = exp(ref - logp) - (ref - logp) - 1
    (unbiased, always >= 0, lower variance; Schulman's estimator used by GRPO).
    """
    d = ref_logp - logp
    if estimator == "k1":
        return -d
    if estimator == "k3":
        return torch.exp(d) - d - 1.0
    raise ValueError(f"unknown kl estimator {estimator!r}; allowed: k1, k3")


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: LossConfig,
    ref_logp: Tensor | None = None,
    behaviour_logp: Tensor | None = None,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Scalar loss to minimise, and float metrics.

    Per-token surrogate ``-min(r*A, clip(r, 1-low, 1+high)*A)``. The clip is *active* (the token
    gives no gradient) when A > 0 and r > 1+high ("clip_frac_high") or A < 0 and r < 1-low
    ("clip_frac_low"); fractions are over masked tokens.

    gspo uses the GSPO-token form: every token of sequence i carries the sequence ratio
    ``s_i = exp(mean_t(logp - old_logp))`` as value, with gradient flowing through its own logp
    (``r_it = sg(s_i) * exp(logp_t - sg(logp_t))``); clipped at ``1 -+ gspo_clip_*``. Averaged per
    sequence this has exactly the value and gradient of the sequence-level GSPO loss, and lets TIS
    weights apply per token.

    TIS: with ``behaviour_logp`` (the engine's log-probs of the sampled tokens) and ``cfg.tis_cap``
    set, each token's policy term is multiplied by ``min(exp(old_logp - behaviour_logp), tis_cap)``
    (no gradient): it corrects for sampling from a slightly different policy (engine numerics, or
    tokens from an older policy version in partial rollouts) while bounding the variance.
    """
    if logp.shape != old_logp.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError(
            f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
            f"{tuple(mask.shape)} must all be the same [B, T]"
        )
    m = mask.to(torch.bool)
    mf = m.to(logp.dtype)
    n_tok = mf.sum().clamp(min=1.0)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    adv = advantages.detach().to(logp.dtype)
    if adv.dim() == 1:
        adv = adv[:, None].expand_as(logp)
    old = old_logp.detach()

    # Mask the log-ratio before exp so padding garbage never becomes inf * 0 = nan.
    delta = torch.where(m, logp - old, zero)
    if cfg.variant == "gspo":
        lengths = mf.sum(dim=1, keepdim=True).clamp(min=1.0)
        seq_log_ratio = (delta.detach() * mf).sum(dim=1, keepdim=True) / lengths
        s = torch.exp(seq_log_ratio)
        lp = torch.where(m, logp, zero)
        ratio = s * torch.exp(lp - lp.detach())  # value s_i, d/dlogp_t = s_i
        low, high = cfg.gspo_clip_low, cfg.gspo_clip_high
    else:
        ratio = torch.exp(delta)
        low, high = cfg.clip_low, cfg.clip_high

    surr = ratio * adv
    surr_clipped = torch.clamp(ratio, 1.0 - low, 1.0 + high) * adv
    token_loss = -torch.minimum(surr, surr_clipped)

    metrics: dict[str, float] = {}
    tis_active = behaviour_logp is not None and cfg.tis_cap is not None
    if behaviour_logp is not None:
        b_delta = torch.where(m, old - behaviour_logp.detach(), zero)
        if tis_active:
            w = torch.clamp(torch.exp(b_delta), max=cfg.tis_cap)
            token_loss = token_loss * w
            metrics["tis_weight_mean"] = float((w * mf).sum() / n_tok)
        # Engine/trainer mismatch for monitoring: k3 estimate of KL(behaviour || old) on the
        # behaviour's own samples, with log-ratio old - behaviour.
        metrics["mismatch_k3"] = float(((torch.exp(b_delta) - b_delta - 1.0) * mf).sum() / n_tok)
    if not tis_active:
        metrics["tis_weight_mean"] = 1.0

    pg_loss = _aggregate(token_loss, mf, cfg.variant, cfg.drgrpo_norm_len)
    loss = pg_loss

    if ref_logp is not None:
        kl_tok = kl_penalty(
            torch.where(m, logp, zero), torch.where(m, ref_logp.detach(), zero), cfg.kl_estimator
        )
        kl = _aggregate(kl_tok, mf, cfg.variant, cfg.drgrpo_norm_len)
        if cfg.kl_coef:
            loss = loss + cfg.kl_coef * kl
        metrics["kl"] = float(kl.detach())
    elif cfg.kl_coef:
        raise ValueError("kl_coef > 0 needs ref_logp")

    if entropy is not None:
        ent = _aggregate(torch.where(m, entropy, zero), mf, cfg.variant, cfg.drgrpo_norm_len)
        if cfg.entropy_coef:
            loss = loss - cfg.entropy_coef * ent
        metrics["entropy"] = float(ent.detach())
    elif cfg.entropy_coef:
        raise ValueError("entropy_coef > 0 needs entropy")

    with torch.no_grad():
        r = ratio.detach()
        clip_high = (adv > 0) & (r > 1.0 + high) & m
        clip_low = (adv < 0) & (r < 1.0 - low) & m
        metrics["clip_frac_high"] = float(clip_high.sum() / n_tok)
        metrics["clip_frac_low"] = float(clip_low.sum() / n_tok)
        metrics["clip_frac"] = metrics["clip_frac_high"] + metrics["clip_frac_low"]
        metrics["ratio_mean"] = float((r * mf).sum() / n_tok)
        metrics["ratio_max"] = float(r.masked_fill(~m, float("-inf")).max()) if m.any() else 1.0
        metrics["pg_loss"] = float(pg_loss.detach())
        metrics["loss"] = float(loss.detach())
    return loss, metrics
