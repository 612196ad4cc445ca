"""Variant configs and the short-string parser."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from components.compression.config import PruneConfig, QuantConfig, VariantConfig, parse_variant


def test_parse_pruning_variants() -> None:
    v = parse_variant("wanda-2:4")
    assert v.name == "wanda-2:4" and v.quant is None
    assert v.prune == PruneConfig(method="wanda", sparsity=0.5, pattern="2:4")
    m = parse_variant("magnitude-50")
    assert m.prune == PruneConfig(method="magnitude", sparsity=0.5, pattern="unstructured")
    s = parse_variant("wanda-60-sens")
    assert s.prune.sparsity == 0.6 and s.prune.allocation == "sensitivity"


def test_parse_quant_variants() -> None:
    g = parse_variant("gptq-w4g64")
    assert g.quant == QuantConfig(method="gptq", bits=4, group_size=64)
    assert g.prune is None and g.exclude == ["lm_head", "embed_tokens"]
    r = parse_variant("rtn-w8")
    assert r.quant.method == "rtn" and r.quant.bits == 8 and r.quant.group_size == "auto"
    a = parse_variant("gptq-w4g32-asym-act")
    assert a.quant.symmetric is False and a.quant.act_order is True and a.quant.group_size == 32


def test_parse_combined_and_mixed() -> None:
    v = parse_variant("wanda-2:4+rtn-w8")
    assert v.prune.pattern == "2:4" and v.quant.method == "rtn" and v.quant.bits == 8
    mp = parse_variant("gptq-w4g64+mp1.5")
    assert mp.mixed_precision.budget_points == 1.5 and mp.mixed_precision.bit_choices == [4, 8]


@pytest.mark.parametrize("bad", ["wanda", "gptq-w3", "rtn-w4g", "wanda-2:4+magnitude-50", "rtn-w8+gptq-w4", "sparsegpt-50", "mp1"])
def test_parser_rejects_bad_strings(bad: str) -> None:
    with pytest.raises((ValueError, ValidationError)):
        parse_variant(bad)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValidationError, match="bitz"):
        VariantConfig(name="x", quant={"method": "rtn", "bitz": 4})
    with pytest.raises(ValidationError, match="bits"):
        QuantConfig(bits=3)
    with pytest.raises(ValidationError, match="sparsity must be 0.5"):
        PruneConfig(pattern="2:4", sparsity=0.6)
    with pytest.raises(ValidationError, match="group_size"):
        QuantConfig(group_size=12)
    with pytest.raises(ValidationError, match="mixed_precision needs a quant"):
        VariantConfig(name="x", prune={"method": "magnitude"}, mixed_precision={"budget_points": 1})
    with pytest.raises(ValidationError, match="neither prunes nor quantizes"):
        VariantConfig(name="x")


def test_config_round_trips_through_json() -> None:
    v = parse_variant("wanda-2:4+gptq-w4g64-act+mp2")
    assert VariantConfig.model_validate_json(v.model_dump_json()) == v
