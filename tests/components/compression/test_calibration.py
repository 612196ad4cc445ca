"""Calibration statistics: the hooks see exactly the real non-padding inputs, shared inputs are
counted once, and sequential compression feeds layer l+1 from the compressed layer l."""

from __future__ import annotations

import torch

from components.compression.apply import target_linears
from components.compression.calibration import capture_decoder_inputs, collect_stats, sequential_compress


def _inputs_by_hook(model, batches, name):
    mod = dict(model.named_modules())[name]
    seen = []
    h = mod.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    with torch.no_grad():
        for b in batches:
            model(**b, use_cache=False)
    h.remove()
    rows = []
    for x, b in zip(seen, batches):
        rows.append(x.reshape(-1, x.shape[-1])[b["attention_mask"].reshape(-1).bool()])
    return torch.cat(rows)


def test_stats_match_a_direct_computation(model, batches) -> None:
    targets = target_linears(model, ["lm_head"])
    stats = collect_stats(model, batches, targets, hessian=True)
    x = _inputs_by_hook(model, batches, "model.layers.1.mlp.down_proj")
    st = stats["model.layers.1.mlp.down_proj"]
    # 2 batches x (3 full rows of 16 + one row of 8) = 2 * 56 = 112 real tokens; padding dropped
    assert st.n == 112 == x.shape[0]
    assert torch.allclose(st.hessian(), 2 * x.T @ x / 112, rtol=1e-4, atol=1e-5)
    assert torch.allclose(st.col_norms(), x.norm(dim=0), rtol=1e-4)


def test_shared_inputs_are_counted_once(model, batches) -> None:
    targets = target_linears(model, ["lm_head"])
    stats = collect_stats(model, batches, targets)
    attn = "model.layers.0.self_attn."
    assert stats[attn + "q_proj"] is stats[attn + "k_proj"] is stats[attn + "v_proj"]
    assert stats["model.layers.0.mlp.gate_proj"] is stats["model.layers.0.mlp.up_proj"]
    assert stats[attn + "o_proj"] is not stats[attn + "q_proj"]


def test_capture_gives_the_embeddings(model, batches) -> None:
    inputs = capture_decoder_inputs(model, batches)
    assert len(inputs) == 2
    emb = model.model.embed_tokens(batches[0]["input_ids"])
    assert torch.equal(inputs[0].hidden, emb)
    assert "position_embeddings" in inputs[0].kwargs


def test_sequential_inputs_come_from_the_compressed_layer(model, batches) -> None:
    # zero every linear of layer 0 as it is "compressed": layer 0 then adds nothing to the residual
    # stream, so layer 1's q_proj must see rmsnorm(embeddings), not the dense layer-0 output
    targets = target_linears(model, ["lm_head"])
    got = {}

    def compress_fn(name, mod, stats):
        if name.startswith("model.layers.0."):
            with torch.no_grad():
                mod.weight.zero_()
        got[name] = stats

    sequential_compress(model, batches, targets, True, False, compress_fn)
    emb = torch.cat([model.model.embed_tokens(b["input_ids"]).reshape(-1, 64)[b["attention_mask"].reshape(-1).bool()] for b in batches])
    with torch.no_grad():
        normed = model.model.layers[1].input_layernorm(emb)
    assert torch.allclose(got["model.layers.1.self_attn.q_proj"].sumsq, (normed**2).sum(0), rtol=1e-4, atol=1e-4)
    assert set(got) == set(targets)
