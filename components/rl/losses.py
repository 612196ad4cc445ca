"""GRPO-family policy losses, one registered function per variant: GRPO, DAPO, Dr. GRPO and GSPO.

Shapes: ``logp``, ``old_logp``, ``mask`` (and the optional ``ref_logp``, ``behaviour_logp``,
``entropy``) are ``[B, T]`` over response tokens; ``advantages`` is ``[B]`` (one per sequence,
broadcast over its tokens) or ``[B, T]``. Padding positions may hold any value, even inf/nan: they
are masked *before* any exp, so they reach neither the loss nor the gradient.

A variant is a function ``(LossInputs, LossConfig) -> LossOutput`` registered with
``@register_loss("name")`` (the convention of verl's ``core_algos.register_policy_loss``); the
recipe picks it with ``rl_train.loss.variant``. Each variant owns the three things GRPO-family
losses differ in:
- the ratio: per token (grpo, dapo, drgrpo) or per sequence (gspo);
- the aggregation of per-token terms into a scalar (the KL and entropy terms use the same one):
  grpo/gspo: mean over each sequence's tokens, then mean over sequences;
  dapo: sum over all tokens / number of tokens in the batch (long answers weigh more);
  drgrpo: sum over each sequence's tokens / a constant length, then mean over sequences
  (no per-length bias);
- the micro-batch scaling: how much of one optimiser step's gradient a micro-batch carries
  (its share of the step's sequences, or for dapo its share of the step's tokens).
The learner calls ``compute_loss`` and backpropagates ``LossOutput.scaled``; it knows no variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor


@dataclass(frozen=True)
class LossInputs:
    """One micro-batch's tensors, and where it sits in its optimiser step."""

    logp: Tensor  # [B, T] current policy (with grad)
    old_logp: Tensor  # [B, T] policy that the ratio is taken against
    advantages: Tensor  # [B] or [B, T]
    mask: Tensor  # [B, T] response tokens
    ref_logp: Tensor | None = None  # [B, T] reference policy, for the KL term
    behaviour_logp: Tensor | None = None  # [B, T] engine log-probs of the sampled tokens, for TIS
    entropy: Tensor | None = None  # [B, T]
    norm_len: int | None = None  # the generation budget: a constant length for variants that need one
    step_share: float = 1.0  # this micro-batch's share of the optimiser step's sequences
    step_tokens: float | None = None  # response tokens in the whole optimiser step


@dataclass(frozen=True)
class LossOutput:
    loss: Tensor  # the micro-batch's loss (logged)
    scaled: Tensor  # what the learner backpropagates: loss times the micro-batch's share of the step
    metrics: dict[str, float]


LossFn = Callable[[LossInputs, "LossConfig"], LossOutput]
Aggregate = Callable[[Tensor, Tensor], Tensor]
LOSSES: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    """Register a loss variant under ``name`` (usable as ``rl_train.loss.variant: name``)."""

    def deco(fn: LossFn) -> LossFn:
        if name in LOSSES and LOSSES[name] is not fn:
            raise ValueError(f"loss variant {name!r} is already registered")
        LOSSES[name] = fn
        return fn

    return deco


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise ValueError(f"unknown loss variant {name!r}; allowed: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def _registered_variants(schema: dict[str, Any]) -> None:
    schema["enum"] = sorted(LOSSES)  # evaluated when the schema is built: later registrations show


class LossConfig(BaseModel):
    """Policy-loss options (part of the rl_train recipe)."""

    model_config = ConfigDict(extra="forbid")

    variant: str = Field(
        "grpo", json_schema_extra=_registered_variants,
        description="policy loss (a registered variant): grpo, dapo (token-level, clip-higher), drgrpo, "
                    "gspo (sequence ratio)")
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
        None, gt=0, description="Dr. GRPO constant normaliser; None: the generation budget "
                                "(max_new_tokens) in training, T (padded length) when called alone"
    )

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, v: str) -> str:
        get_loss(v)
        return v


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


# --- aggregations: per-token terms [B, T] and the float mask -> scalar -------------------------

def seq_mean(x: Tensor, mf: Tensor) -> Tensor:
    """Mean over each sequence's tokens, then over sequences (empty sequences do not count)."""
    lengths = mf.sum(dim=1)
    per_seq = (x * mf).sum(dim=1) / lengths.clamp(min=1.0)
    return per_seq.sum() / (lengths > 0).sum().clamp(min=1)


def token_mean(x: Tensor, mf: Tensor) -> Tensor:
    """Sum over all tokens / number of tokens (every token weighs the same)."""
    return (x * mf).sum() / mf.sum().clamp(min=1.0)


def constant_length_mean(length: float) -> Aggregate:
    """Sum over each sequence's tokens / a constant ``length``, then mean over sequences."""
    return lambda x, mf: ((x * mf).sum(dim=1) / length).mean()


# --- ratios -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Masked:
    """The inputs with padding neutralised: what every variant's ratio and surrogate start from."""

    m: Tensor  # bool mask
    mf: Tensor  # float mask in logp's dtype
    zero: Tensor
    adv: Tensor  # [B, T], no grad
    old: Tensor  # no grad
    delta: Tensor  # logp - old on response tokens, 0 elsewhere (masked before any exp)

    @classmethod
    def of(cls, inp: LossInputs) -> "Masked":
        logp = inp.logp
        if logp.shape != inp.old_logp.shape or logp.shape != inp.mask.shape or logp.dim() != 2:
            raise ValueError(
                f"logp {tuple(logp.shape)}, old_logp {tuple(inp.old_logp.shape)} and mask "
                f"{tuple(inp.mask.shape)} must all be the same [B, T]"
            )
        m = inp.mask.to(torch.bool)
        zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
        adv = inp.advantages.detach().to(logp.dtype)
        if adv.dim() == 1:
            adv = adv[:, None].expand_as(logp)
        old = inp.old_logp.detach()
        return cls(m, m.to(logp.dtype), zero, adv, old, torch.where(m, logp - old, zero))


def token_ratio(inp: LossInputs, mk: Masked) -> Tensor:
    return torch.exp(mk.delta)


def sequence_ratio(inp: LossInputs, mk: Masked) -> Tensor:
    """GSPO-token form: every token of sequence i carries ``s_i = exp(mean_t(logp - old_logp))`` as
    value, with gradient through its own logp (``sg(s_i) * exp(logp_t - sg(logp_t))``). Averaged
    per sequence this has the value and gradient of the sequence-level GSPO loss."""
    lengths = mk.mf.sum(dim=1, keepdim=True).clamp(min=1.0)
    s = torch.exp((mk.delta.detach() * mk.mf).sum(dim=1, keepdim=True) / lengths)
    lp = torch.where(mk.m, inp.logp, mk.zero)
    return s * torch.exp(lp - lp.detach())  # value s_i, d/dlogp_t = s_i


# --- the clipped surrogate every variant shares ----------------------------------------------

def _tis(inp: LossInputs, mk: Masked, cfg: LossConfig, token_loss: Tensor,
         metrics: dict[str, float]) -> Tensor:
    """TIS: each token's term times ``min(exp(old - behaviour), tis_cap)`` (no gradient), which
    corrects for sampling from a slightly different policy (engine numerics, stale partial-rollout
    tokens) while bounding the variance. Also the engine/trainer mismatch (k3 of KL(behaviour||old))."""
    n_tok = mk.mf.sum().clamp(min=1.0)
    tis_active = inp.behaviour_logp is not None and cfg.tis_cap is not None
    if inp.behaviour_logp is not None:
        b_delta = torch.where(mk.m, mk.old - inp.behaviour_logp.detach(), mk.zero)
        if cfg.tis_cap is not None:
            w = torch.clamp(torch.exp(b_delta), max=cfg.tis_cap)
            token_loss = token_loss * w
            metrics["tis_weight_mean"] = float((w * mk.mf).sum() / n_tok)
        metrics["mismatch_k3"] = float(((torch.exp(b_delta) - b_delta - 1.0) * mk.mf).sum() / n_tok)
    if not tis_active:
        metrics["tis_weight_mean"] = 1.0
    return token_loss


def _penalties(inp: LossInputs, mk: Masked, cfg: LossConfig, agg: Aggregate, loss: Tensor,
               metrics: dict[str, float]) -> Tensor:
    """The KL penalty to the reference policy and the entropy bonus, aggregated like the loss."""
    if inp.ref_logp is not None:
        kl_tok = kl_penalty(torch.where(mk.m, inp.logp, mk.zero), torch.where(mk.m, inp.ref_logp.detach(), mk.zero),
                            cfg.kl_estimator)
        kl = agg(kl_tok, mk.mf)
        if cfg.kl_coef:
            loss = loss + cfg.kl_coef * kl
        metrics["kl"] = float(kl.detach())
    elif cfg.kl_coef:
        raise ValueError("kl_coef > 0 needs ref_logp")
    if inp.entropy is not None:
        ent = agg(torch.where(mk.m, inp.entropy, mk.zero), mk.mf)
        if cfg.entropy_coef:
            loss = loss - cfg.entropy_coef * ent
        metrics["entropy"] = float(ent.detach())
    elif cfg.entropy_coef:
        raise ValueError("entropy_coef > 0 needs entropy")
    return loss


def _clip_metrics(ratio: Tensor, mk: Masked, low: float, high: float, metrics: dict[str, float]) -> None:
    n_tok = mk.mf.sum().clamp(min=1.0)
    with torch.no_grad():
        r = ratio.detach()
        clip_high = (mk.adv > 0) & (r > 1.0 + high) & mk.m
        clip_low = (mk.adv < 0) & (r < 1.0 - low) & mk.m
        metrics["clip_frac_high"] = float(clip_high.sum() / n_tok)
        metrics["clip_frac_low"] = float(clip_low.sum() / n_tok)
        metrics["clip_frac"] = metrics["clip_frac_high"] + metrics["clip_frac_low"]
        metrics["ratio_mean"] = float((r * mk.mf).sum() / n_tok)
        metrics["ratio_max"] = float(r.masked_fill(~mk.m, float("-inf")).max()) if mk.m.any() else 1.0


def clipped_surrogate(inp: LossInputs, cfg: LossConfig, mk: Masked, ratio: Tensor, low: float, high: float,
                      agg: Aggregate, scale: float) -> LossOutput:
    """Per-token ``-min(r*A, clip(r, 1-low, 1+high)*A)`` (TIS-weighted), aggregated by ``agg``, plus
    the KL and entropy terms; ``scaled`` is the loss times ``scale``. The clip is *active* (the token
    gives no gradient) when A > 0 and r > 1+high ("clip_frac_high") or A < 0 and r < 1-low
    ("clip_frac_low"); fractions are over masked tokens."""
    surr = ratio * mk.adv
    surr_clipped = torch.clamp(ratio, 1.0 - low, 1.0 + high) * mk.adv
    metrics: dict[str, float] = {}
    token_loss = _tis(inp, mk, cfg, -torch.minimum(surr, surr_clipped), metrics)
    pg_loss = agg(token_loss, mk.mf)
    loss = _penalties(inp, mk, cfg, agg, pg_loss, metrics)
    _clip_metrics(ratio, mk, low, high, metrics)
    metrics["pg_loss"] = float(pg_loss.detach())
    metrics["loss"] = float(loss.detach())
    return LossOutput(loss, loss * scale, metrics)


# --- the variants -------------------------------------------------------------------------------

@register_loss("grpo")
def grpo_loss(inp: LossInputs, cfg: LossConfig) -> LossOutput:
    """Token ratio, mean per sequence then over sequences; a micro-batch weighs its sequences."""
    mk = Masked.of(inp)
    return clipped_surrogate(inp, cfg, mk, token_ratio(inp, mk), cfg.clip_low, cfg.clip_high, seq_mean,
                             inp.step_share)


@register_loss("dapo")
def dapo_loss(inp: LossInputs, cfg: LossConfig) -> LossOutput:
    """Token ratio, token-level mean; a micro-batch weighs its tokens' share of the optimiser step, so
    the step's gradient is that of one token mean over all its tokens."""
    mk = Masked.of(inp)
    scale = float(inp.mask.sum()) / inp.step_tokens if inp.step_tokens else 1.0
    return clipped_surrogate(inp, cfg, mk, token_ratio(inp, mk), cfg.clip_low, cfg.clip_high, token_mean, scale)


@register_loss("drgrpo")
def drgrpo_loss(inp: LossInputs, cfg: LossConfig) -> LossOutput:
    """Token ratio, per-sequence sums over a constant length: ``drgrpo_norm_len``, else the
    generation budget, else the padded length T."""
    mk = Masked.of(inp)
    norm = cfg.drgrpo_norm_len if cfg.drgrpo_norm_len is not None else inp.norm_len
    agg = constant_length_mean(float(norm if norm is not None else inp.logp.shape[1]))
    return clipped_surrogate(inp, cfg, mk, token_ratio(inp, mk), cfg.clip_low, cfg.clip_high, agg, inp.step_share)


@register_loss("gspo")
def gspo_loss(inp: LossInputs, cfg: LossConfig) -> LossOutput:
    """Sequence ratio (GSPO-token form) clipped at ``1 -+ gspo_clip_*``, mean per sequence."""
    mk = Masked.of(inp)
    return clipped_surrogate(inp, cfg, mk, sequence_ratio(inp, mk), cfg.gspo_clip_low, cfg.gspo_clip_high,
                             seq_mean, inp.step_share)


def compute_loss(inp: LossInputs, cfg: LossConfig) -> LossOutput:
    """The loss of ``cfg.variant`` (what the learner calls)."""
    return get_loss(cfg.variant)(inp, cfg)


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
    """Scalar loss to minimise and float metrics of one whole batch (``compute_loss`` unscaled)."""
    out = compute_loss(LossInputs(logp, old_logp, advantages, mask, ref_logp, behaviour_logp, entropy), cfg)
    return out.loss, out.metrics
