"""compress_model on a tiny Llama: masks, Wanda ranking, group-size choice, state consistency, stats."""

from __future__ import annotations

import pytest
import torch

from components.compression.apply import (
    allocate_sparsity,
    compress_model,
    prune_mask,
    prune_scores,
    resolve_group_size,
    target_linears,
)
from components.compression.calibration import InputStats
from components.compression.config import PruneConfig, parse_variant
from kernels.quant import dequantize, fake_quantize, unpack_int
from kernels.sparsity import is_nm_sparse


def test_wanda_ranks_within_each_output_row() -> None:
    # row 0: |W| = [1, 2, 3, 4], ||X|| = [8, 1, 1, 1] -> scores [8, 2, 3, 4]: keep cols 0 and 3
    #   (magnitude alone would keep cols 2 and 3)
    # row 1: |W| = [4, 3, 2, 1] -> scores [32, 3, 2, 1]: keep cols 0 and 1
    w = torch.tensor([[1.0, -2.0, 3.0, -4.0], [4.0, 3.0, -2.0, 1.0]])
    stats = InputStats(sumsq=torch.tensor([64.0, 1.0, 1.0, 1.0]), xtx=None, n=10)
    wanda = PruneConfig(method="wanda", sparsity=0.5)
    scores = prune_scores(w, wanda, stats)
    assert torch.equal(scores, torch.tensor([[8.0, 2.0, 3.0, 4.0], [32.0, 3.0, 2.0, 1.0]]))
    mask = prune_mask(scores, wanda, 0.5)
    assert mask.tolist() == [[True, False, False, True], [True, True, False, False]]
    # a per-layer comparison would instead keep the 4 largest of all 8 scores: 32, 8, 4, 3 (twice)
    magnitude = PruneConfig(method="magnitude", sparsity=0.5)
    assert prune_mask(prune_scores(w, magnitude, None), magnitude, 0.5).tolist() == [
        [False, False, True, True],
        [True, True, False, False],
    ]


def test_group_size_auto() -> None:
    assert resolve_group_size("auto", [576, 1536]) == 64  # SmolLM2: 576 = 9 * 64, not a multiple of 128
    assert resolve_group_size("auto", [576, 192]) == 64
    assert resolve_group_size("auto", [1024, 4096]) == 128
    assert resolve_group_size("auto", [96]) == 32
    with pytest.raises(ValueError, match="no group size"):
        resolve_group_size("auto", [100])
    with pytest.raises(ValueError, match="does not divide"):
        resolve_group_size(128, [576])


def test_targets_leave_out_head_and_embeddings(model) -> None:
    names = set(target_linears(model, ["lm_head", "embed_tokens"]))
    assert len(names) == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert "lm_head" not in names


def test_wanda_24_on_a_model(model, batches) -> None:
    emb = model.model.embed_tokens.weight.detach().clone()
    state = compress_model(model, parse_variant("wanda-2:4"), batches)
    for name, mod in target_linears(model, ["lm_head"]).items():
        assert is_nm_sparse(mod.weight), name
        assert torch.equal(state.layers[name].mask, mod.weight != 0)
    assert torch.equal(model.model.embed_tokens.weight, emb)  # excluded, and tied to lm_head
    assert state.stats["sparsity"] == 0.5
    assert state.stats["avg_bits_targeted"] == 32.0  # pruned only: still fp32
    assert state.group_size is None


def test_rtn_weights_are_the_fake_quantized_originals(model) -> None:
    before = {n: m.weight.detach().clone() for n, m in target_linears(model, ["lm_head"]).items()}
    state = compress_model(model, parse_variant("rtn-w8"), [])  # RTN needs no calibration data
    assert state.group_size == 64  # widths 64 and 128: largest candidate dividing both is 64
    for name, mod in target_linears(model, ["lm_head"]).items():
        assert torch.equal(mod.weight, fake_quantize(before[name], 8, 64))
    # 8 bits + one fp32 scale per 64 weights = 8.5 bits; symmetric, so no zero points
    assert state.stats["avg_bits_targeted"] == 8.0
    assert state.stats["avg_bits_targeted_with_scales"] == pytest.approx(8.5)
    # all weights: targeted 73728 at 8 bits; embeddings 128*64 + 2 layers * 2 norms * 64 + final norm 64 at 32
    other = 128 * 64 + 2 * 2 * 64 + 64
    assert state.stats["avg_bits_all"] == pytest.approx((73728 * 8 + other * 32) / (73728 + other))


def test_gptq_state_matches_model_weights(model, batches) -> None:
    calls: list = []
    state = compress_model(model, parse_variant("wanda-2:4+gptq-w4g32-asym-act"), batches, progress=lambda *a: calls.append(a))
    assert calls == [("layer 1/2", 0.5), ("layer 2/2", 1.0)]  # (message, fraction) once per decoder layer
    for name, mod in target_linears(model, ["lm_head"]).items():
        rec = state.layers[name]
        assert rec.bits == 4 and rec.group_size == 32 and rec.packed.dtype == torch.int32
        assert rec.packed.shape == (mod.out_features, mod.in_features // 8)
        deq = dequantize(unpack_int(rec.packed, 4), rec.scale, rec.zero, 32)
        assert torch.allclose(deq, mod.weight, atol=1e-6)
        assert is_nm_sparse(mod.weight)  # GPTQ kept the 2:4 mask


def test_sensitivity_allocation_keeps_the_mean(model, batches) -> None:
    targets = target_linears(model, ["lm_head"])
    prune = PruneConfig(method="wanda", sparsity=0.5, allocation="sensitivity")
    alloc = allocate_sparsity(model, targets, prune, batches)
    per_layer = [alloc[f"model.layers.{i}.mlp.down_proj"] for i in range(2)]
    # OWL: density = normalised outlier ratio in [0, 2 * 0.08], re-centred on 0.5 -> the two
    # layers sit at 0.5 - 0.08 and 0.5 + 0.08 (whichever has more outliers keeps more weights)
    assert sorted(per_layer) == pytest.approx([0.42, 0.58])
    assert sum(per_layer) / 2 == pytest.approx(0.5)


def test_bits_override_and_errors(model, batches) -> None:
    override = {"model.layers.0.mlp.down_proj": 8}
    state = compress_model(model, parse_variant("rtn-w4g32"), [], bits_override=override)
    assert state.per_layer_bits["model.layers.0.mlp.down_proj"] == 8
    assert state.per_layer_bits["model.layers.1.mlp.down_proj"] == 4
    with pytest.raises(ValueError, match="calibration"):
        compress_model(model, parse_variant("gptq-w4g32"), [])
    with pytest.raises(ValueError, match="not targeted"):
        compress_model(model, parse_variant("rtn-w4g32"), [], bits_override={"lm_head": 8})
