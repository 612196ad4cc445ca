"""SmoothQuant: exact in float, and it makes W8A8 rounding cheaper when activations have outlier channels."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from components.compression.apply import compress_model
from components.compression.config import parse_variant
from components.compression.smoothing import activation_absmax, smooth


def _logits(model, batch):
    with torch.inference_mode():
        return model(**batch, use_cache=False).logits


def _with_outliers(model):
    """Plant outlier channels the way LLMs have them: the norm's output gets a few channels 60x
    larger and the linears that read them take 60x smaller weights (same function)."""
    with torch.no_grad():
        for layer in model.model.layers:
            for norm, lins in ((layer.input_layernorm, (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)),
                               (layer.post_attention_layernorm, (layer.mlp.gate_proj, layer.mlp.up_proj))):  # fmt: skip
                norm.weight[[3, 17]] *= 60.0
                for lin in lins:
                    lin.weight[:, [3, 17]] /= 60.0
    return model


def _copy(model):
    m = AutoModelForCausalLM.from_config(model.config).eval()
    m.load_state_dict(model.state_dict())
    return m


def test_smoothing_keeps_the_float_function_and_flattens_activations(model, batches):
    model = _with_outliers(model)
    ref = _logits(model, batches[0])
    before = activation_absmax(model, batches)
    assert smooth(model, batches, alpha=0.5) == 4  # 2 layers x (attention input, MLP input)
    assert torch.allclose(_logits(model, batches[0]), ref, atol=1e-5 * ref.abs().max().item() + 1e-6)
    after = activation_absmax(model, batches)
    for key, a in before.items():
        spread = lambda t: (t.max() / t.median()).item()  # noqa: E731
        assert spread(after[key]) < spread(a) / 3, key  # the planted 60x channels are tamed


def test_smoothquant_lowers_the_w8a8_error_with_outlier_channels(model, batches):
    model = _with_outliers(model)
    ref = _logits(model, batches[0])
    errors = {}
    for spec in ("rtn-w8a8", "rtn-w8a8-sq"):
        m = _copy(model)
        compress_model(m, parse_variant(spec), batches)
        errors[spec] = (_logits(m, batches[0]) - ref).pow(2).mean().item()
    assert errors["rtn-w8a8-sq"] < errors["rtn-w8a8"] / 2, errors


def test_smoothing_config_rules(model):
    assert parse_variant("rtn-w8a8-sq").quant.smoothing == 0.5
    assert parse_variant("gptq-w8a8-sq").quant.method == "gptq"
    with pytest.raises(ValueError, match="smoothing needs activation_bits"):
        parse_variant("rtn-w8-sq")
    with pytest.raises(ValueError, match="needs calibration batches"):
        compress_model(model, parse_variant("rtn-w8a8-sq"), [])
    with pytest.raises(ValueError, match="alpha"):
        smooth(model, [], alpha=1.5)


def _padded_and_single(lengths, seq=16, pad_id=0, seed=1):
    """One right-padded batch with rows of the given lengths, and the same rows one at a time, unpadded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 128, (len(lengths), seq), generator=g)
    mask = torch.zeros_like(ids)
    for j, n in enumerate(lengths):
        ids[j, n:] = pad_id
        mask[j, :n] = 1
    single = [{"input_ids": ids[j : j + 1, :n], "attention_mask": mask[j : j + 1, :n]} for j, n in enumerate(lengths)]
    return [{"input_ids": ids, "attention_mask": mask}], single


def test_smoothing_scales_ignore_padding(model):
    """Padded calibration batches of rows of different lengths give the scales that unpadded
    one-sequence-at-a-time calibration gives (the pad token's embedding is made 50x larger, so a
    pad position counted in max|x| would move them)."""
    model = _with_outliers(model)
    with torch.no_grad():
        model.model.embed_tokens.weight[0] *= 50.0
    padded, single = _padded_and_single([16, 3, 9, 5])
    a_pad, a_one = activation_absmax(model, padded), activation_absmax(model, single)
    assert a_pad.keys() == a_one.keys() and len(a_one) == 4
    for key in a_one:
        torch.testing.assert_close(a_pad[key], a_one[key], rtol=1e-5, atol=1e-6)
    m_pad, m_one = _copy(model), _copy(model)
    smooth(m_pad, padded, 0.5), smooth(m_one, single, 0.5)
    for (name, p), q in zip(m_pad.state_dict().items(), m_one.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
