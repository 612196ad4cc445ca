"""Compression variant configs (part of the recipe) and the short-string variant parser.

Short strings, joined with ``+`` (at most one pruning, one quantization, one mixed-precision part):
  ``magnitude-50``, ``wanda-50``, ``wanda-2:4``, ``wanda-60-sens`` (sensitivity-allocated sparsity)
  ``rtn-w8``, ``gptq-w4g64``, ``gptq-w4g64-asym-act`` (asymmetric, act-order)
  ``rtn-w8a8``, ``gptq-w8a8`` (int8 weights per output channel + int8 activations per token,
  dynamic: compressed-tensors W8A8, which vLLM serves with int8 GEMMs on GPUs and x86 CPUs);
  ``-sq`` adds SmoothQuant scaling (alpha 0.5) first, e.g. ``rtn-w8a8-sq``
  ``mp2`` / ``mp0.5`` (mixed 4/8-bit precision within a 2 / 0.5 point accuracy budget)
e.g. ``wanda-2:4+rtn-w8`` or ``gptq-w4g64+mp1``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class PruneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["magnitude", "wanda"] = Field("wanda", description="magnitude or wanda (|w| x activation norm)")
    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="share of weights set to zero")
    pattern: Literal["unstructured", "2:4"] = Field(
        "unstructured", description="unstructured or 2:4 (two of every four)")
    allocation: Literal["uniform", "sensitivity"] = Field(
        "uniform", description="uniform, or per-layer sparsity by sensitivity")

    @model_validator(mode="after")
    def _pattern_rules(self) -> "PruneConfig":
        if self.pattern == "2:4" and self.sparsity != 0.5:
            raise ValueError("pattern '2:4' prunes exactly half the weights: sparsity must be 0.5")
        if self.pattern == "2:4" and self.allocation != "uniform":
            raise ValueError("allocation 'sensitivity' needs pattern 'unstructured' (2:4 is 50% everywhere)")
        return self


class QuantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["rtn", "gptq"] = Field("gptq", description="rtn (round to nearest) or gptq")
    bits: Literal[4, 8] = Field(4, description="weight bits")
    symmetric: bool = Field(True, description="symmetric (no zero point) quantization")
    group_size: int | Literal["auto", "channel"] = Field(
        "auto", description="auto: largest of 128/64/32 dividing every input width; channel: one scale per output row"
    )
    activation_bits: Literal[8] | None = Field(
        None, description="8: also quantize each linear's input per token at run time (W8A8); needs bits 8, "
        "symmetric weights, and sets group_size 'auto' to 'channel'"
    )
    smoothing: float | None = Field(
        None, ge=0.0, le=1.0,
        description="SmoothQuant alpha (e.g. 0.5): move activation outliers into the weights first; W8A8 only",
    )  # fmt: skip
    act_order: bool = Field(False, description="GPTQ: quantize columns by decreasing Hessian diagonal")
    damp: float = Field(0.01, gt=0.0, description="GPTQ: Hessian dampening (share of the mean diagonal)")
    block_size: int = Field(128, ge=1, description="GPTQ: columns per block update")

    @field_validator("group_size")
    @classmethod
    def _group_size_ok(cls, v: int | str) -> int | str:
        if isinstance(v, int) and (v < 8 or v % 8):
            raise ValueError("group_size must be 'auto' or a positive multiple of 8 (packing is 8 int4 per int32)")
        return v

    @model_validator(mode="after")
    def _w8a8_rules(self) -> "QuantConfig":
        if self.activation_bits is None:
            if self.smoothing is not None:
                raise ValueError("smoothing needs activation_bits 8: it only helps quantized activations")
            return self
        # vLLM's int8 W8A8 kernels take per-channel (or per-tensor) symmetric weight scales only
        if self.bits != 8:
            raise ValueError("activation_bits 8 needs bits 8 (W8A8); int4 weights with int8 activations are not served")
        if not self.symmetric:
            raise ValueError("activation_bits 8 needs symmetric weights (vLLM's W8A8 int8 kernels)")
        if self.group_size == "auto":
            self.group_size = "channel"
        if self.group_size != "channel":
            raise ValueError("activation_bits 8 needs group_size 'channel' (one weight scale per output row)")
        return self


class MixedPrecisionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    budget_points: float = Field(1.0, ge=0.0, description="accuracy points the mixed-precision choice may lose")
    bit_choices: list[Literal[4, 8]] = Field(
        default_factory=lambda: [4, 8], description="bit widths per layer to choose from")
    sensitivity: Literal["loss", "hessian_trace"] = Field(
        "hessian_trace", description="how layer sensitivity is measured")

    @field_validator("bit_choices")
    @classmethod
    def _two_distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != 2:
            raise ValueError("bit_choices must hold two distinct widths, e.g. [4, 8]")
        return sorted(set(v))


class VariantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="variant name (MLflow runs, candidates)")
    prune: PruneConfig | None = Field(None, description="pruning step; null: none")
    quant: QuantConfig | None = Field(None, description="quantization step; null: none")
    mixed_precision: MixedPrecisionConfig | None = Field(
        None, description="per-layer bit widths within an accuracy budget; null: off")
    # LM head and embeddings stay dense and full precision (tied in SmolLM2; tiny share of FLOPs)
    exclude: list[str] = Field(
        default_factory=lambda: ["lm_head", "embed_tokens"], description="module names left uncompressed")

    @model_validator(mode="after")
    def _needs_something(self) -> "VariantConfig":
        if self.prune is None and self.quant is None:
            raise ValueError(f"variant {self.name!r} neither prunes nor quantizes")
        if self.mixed_precision is not None and self.quant is None:
            raise ValueError("mixed_precision needs a quant section (its method, group size, symmetry)")
        if self.mixed_precision is not None and self.quant.group_size == "channel":
            raise ValueError("mixed_precision needs group-wise scales; it cannot be combined with per-channel or W8A8")
        return self


_PRUNE = re.compile(r"^(magnitude|wanda)-(2:4|\d{1,2})(-sens)?$")
_QUANT = re.compile(r"^(rtn|gptq)-w(4|8)(a8)?(?:g(\d+))?((?:-(?:asym|act|sq))*)$")
_MIXED = re.compile(r"^mp(\d+(?:\.\d+)?)$")


def parse_variant(spec: str) -> VariantConfig:
    """Parse a short variant string (see module doc) into a validated :class:`VariantConfig`."""
    fields: dict = {"name": spec}
    for part in spec.strip().split("+"):
        if m := _PRUNE.match(part):
            if "prune" in fields:
                raise ValueError(f"{spec!r}: more than one pruning part")
            method, amount, sens = m.groups()
            fields["prune"] = PruneConfig(
                method=method,
                sparsity=0.5 if amount == "2:4" else int(amount) / 100,
                pattern="2:4" if amount == "2:4" else "unstructured",
                allocation="sensitivity" if sens else "uniform",
            )
        elif m := _QUANT.match(part):
            if "quant" in fields:
                raise ValueError(f"{spec!r}: more than one quantization part")
            method, bits, a8, group, flags = m.groups()
            fields["quant"] = QuantConfig(
                method=method,
                bits=int(bits),
                group_size=int(group) if group else "auto",
                symmetric="-asym" not in flags,
                act_order="-act" in flags,
                activation_bits=8 if a8 else None,
                smoothing=0.5 if "-sq" in flags else None,
            )
        elif m := _MIXED.match(part):
            fields["mixed_precision"] = MixedPrecisionConfig(budget_points=float(m.group(1)))
        else:
            raise ValueError(
                f"{spec!r}: cannot parse {part!r}; expected e.g. 'wanda-2:4', 'magnitude-50', "
                "'rtn-w8', 'rtn-w8a8', 'gptq-w4g64', 'gptq-w4-asym-act' or 'mp1', joined with '+'"
            )
    return VariantConfig(**fields)


class CompressConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variants: list[VariantConfig] = Field(
        default_factory=list, description="variants to build, e.g. rtn-w8, gptq-w4g64, wanda-2:4 (or full objects)")
    calibration_samples: int = Field(64, ge=1, description="calibration prompts (GPTQ, Wanda)")
    calibration_seq_len: int = Field(64, ge=8, description="tokens per calibration prompt")
    refresh: bool = Field(False, description="recompute this stage even when the cache has an entry")

    @field_validator("variants", mode="before")
    @classmethod
    def _parse_short(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [parse_variant(x) if isinstance(x, str) else x for x in v]
        return v
