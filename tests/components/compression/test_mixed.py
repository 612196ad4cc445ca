"""Mixed precision: fused units, the bisection's budget guarantee, sensitivities on a tiny model."""

from __future__ import annotations

import torch

from components.compression.apply import target_linears
from components.compression.config import parse_variant
from components.compression.mixed import fused_units, layer_sensitivity, run_mixed_precision, search_mixed_precision

LAYERS = ["L0", "L1", "L2", "L3", "L4", "L5"]
# every penalty is a sum of powers of two, so the drops below are exact in floating point
SENS = {"L0": 5.0, "L1": 0.25, "L2": 0.125, "L3": 0.5, "L4": 2.0, "L5": 0.125}


def _scripted(calls: list):
    def evaluate(assignment: dict[str, int]) -> float:
        calls.append(dict(assignment))
        return 50.0 - sum(SENS[n] for n, b in assignment.items() if b == 4)  # a 4-bit layer costs its sensitivity

    return evaluate


def test_search_finds_the_most_compressed_assignment_within_budget() -> None:
    # most sensitive first: L0 (5), L4 (2), L3 (0.5), L1 (0.25), L2, L5 (0.125)
    # k high-bit layers -> drop: k=0: 8.0, k=1: 3.0, k=2: 1.0 (<= 1 passes)
    calls: list = []
    history: list = []
    got = search_mixed_precision(LAYERS, SENS, _scripted(calls), 50.0, 1.0, [4, 8], history)
    assert got == {"L0": 8, "L1": 4, "L2": 4, "L3": 4, "L4": 8, "L5": 4}
    assert 50.0 - _scripted([])(got) <= 1.0
    assert len(calls) <= 4  # bisection over 7 candidates: ceil(log2 7) = 3 probes
    assert all(h["drop"] <= 1.0 or h["high_layers"] < 2 for h in history)


def test_search_budget_extremes() -> None:
    # a budget of 8 points allows everything at 4 bits; a budget of 0 forces every layer to 8
    assert set(search_mixed_precision(LAYERS, SENS, _scripted([]), 50.0, 8.0).values()) == {4}
    assert set(search_mixed_precision(LAYERS, SENS, _scripted([]), 50.0, 0.0).values()) == {8}
    # 0.25 points: k=4 leaves L2 and L5 low: drop 0.25 -> passes; k=3 adds L1: 0.5 -> fails
    got = search_mixed_precision(LAYERS, SENS, _scripted([]), 50.0, 0.25)
    assert [n for n, b in got.items() if b == 4] == ["L2", "L5"]


def test_fused_units_group_qkv_and_gate_up(model) -> None:
    units = fused_units(list(target_linears(model, ["lm_head"])))
    assert units["model.layers.0.self_attn.qkv_proj"] == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
        "model.layers.0.self_attn.v_proj",
    ]
    assert units["model.layers.1.mlp.gate_up_proj"] == ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]
    assert len(units) == 2 * 4  # qkv, o, gate_up, down per layer


def test_sensitivities_on_a_tiny_model(model, batches) -> None:
    variant = parse_variant("rtn-w4g32+mp1")
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight")}
    for method in ("hessian_trace", "loss"):
        sens = layer_sensitivity(model, variant, batches[:1], method)
        assert len(sens) == 8 and all(torch.isfinite(torch.tensor(v)) for v in sens.values())
    assert all(v >= 0 for v in layer_sensitivity(model, variant, batches[:1], "hessian_trace").values())
    # probing must leave the model as it was
    for n, m in model.named_modules():
        if hasattr(m, "weight"):
            assert torch.equal(m.weight, before[n]), n


def test_run_mixed_precision_end_to_end(model, batches) -> None:
    # score = 100 minus 1 point per 4-bit unit: a budget of 2.5 points allows exactly 2 units at 4 bits
    variant = parse_variant("rtn-w4g32+mp2.5")

    def evaluate_model(m) -> float:
        weights = {n: mm.weight for n, mm in target_linears(m, ["lm_head"]).items()}
        low = 0
        for unit in fused_units(list(weights)).values():
            w = weights[unit[0]]
            # a unit quantized at 4 bits has at most 16 distinct values per 32-group
            low += int(torch.unique(w[0, :32]).numel() <= 16)
        return 100.0 - low

    state, assignment, history = run_mixed_precision(model, variant, batches, evaluate_model, 100.0)
    units_low = sum(1 for u in fused_units(list(assignment)).values() if assignment[u[0]] == 4)
    assert units_low == 2
    assert state.per_layer_bits == assignment
    assert evaluate_model(model) == 98.0
