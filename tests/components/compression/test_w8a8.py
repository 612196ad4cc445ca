"""W8A8: per-token activation quantization against a scalar reference, the variant strings, the
in-memory model, the compressed-tensors export and the dense twin's sidecar."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from components.compression.apply import compress_model
from components.compression.config import QuantConfig, VariantConfig, parse_variant
from components.compression.export import export_compressed_tensors, export_dense
from components.models import load_model
from kernels.quant import fake_quantize_activations, fake_quantize_activations_reference, quantize_activations_per_token


def _logits(model, batch):
    with torch.inference_mode():
        return model(**batch, use_cache=False).logits


def test_per_token_activation_quant_matches_the_scalar_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 40, generator=g) * torch.logspace(-2, 2, 40)  # outlier columns, as in LLMs
    x[1, 2] = 0.0  # an all-zero token stays zero (no division by zero)
    got, ref = fake_quantize_activations(x), fake_quantize_activations_reference(x)
    q, scale = quantize_activations_per_token(x)
    assert q.dtype == torch.int8 and scale.shape == (3, 5, 1)
    assert int(q.abs().amax(dim=-1).min()) in (0, 127)  # the largest entry of every token maps to +-127
    assert torch.equal(got[1, 2], torch.zeros(40))
    step = scale.expand_as(x)
    # equal up to float32 vs float64 rounding on an exact .5 boundary, which moves one step
    assert ((got - ref).abs() <= step * 1.0001).all()
    assert ((got - ref).abs() > step / 2).float().mean() < 1e-2
    assert ((got - x).abs() <= step / 2 * 1.0001).all()  # round to nearest: at most half a step off


def test_w8a8_variant_strings_and_rules():
    v = parse_variant("gptq-w8a8")
    assert (v.quant.method, v.quant.bits, v.quant.activation_bits, v.quant.group_size) == ("gptq", 8, 8, "channel")
    assert parse_variant("wanda-2:4+rtn-w8a8").quant.activation_bits == 8
    with pytest.raises(ValueError, match="needs bits 8"):
        QuantConfig(bits=4, activation_bits=8)
    with pytest.raises(ValidationError, match="symmetric"):
        QuantConfig(bits=8, activation_bits=8, symmetric=False)
    with pytest.raises(ValidationError, match="group_size 'channel'"):
        QuantConfig(bits=8, activation_bits=8, group_size=64)
    with pytest.raises(ValidationError, match="mixed_precision"):
        VariantConfig(name="x", quant={"bits": 8, "activation_bits": 8}, mixed_precision={})
    with pytest.raises(ValueError, match="cannot parse"):
        parse_variant("rtn-w8a4")


def test_w8a8_model_quantizes_weights_per_channel_and_inputs_per_token(model, batches):
    ref = _logits(model, batches[0])
    w8 = AutoModelForCausalLM.from_config(model.config).eval()
    w8.load_state_dict(model.state_dict())
    compress_model(w8, parse_variant("rtn-w8"), batches)  # weight-only, group-wise
    state = compress_model(model, parse_variant("rtn-w8a8"), batches)
    assert state.channelwise and state.activation_bits == 8 and state.summary()["group_size"] == "channel"
    rec = state.layers["model.layers.0.mlp.down_proj"]
    assert rec.group_size == 128 and rec.scale.shape == (64, 1)  # one scale per output row
    got = _logits(model, batches[0])
    assert not torch.equal(got, ref) and (got - ref).abs().max() < 0.05 * ref.abs().max()
    # the activation hooks are live: removing them changes the output
    for mod in model.modules():
        mod._forward_pre_hooks.clear()
    assert not torch.allclose(_logits(model, batches[0]), got, atol=1e-6)


def test_w8a8_exports_int_quantized_and_the_dense_twin_reloads_its_hooks(model, batches, tmp_path):
    state = compress_model(model, parse_variant("rtn-w8a8"), batches)
    want = _logits(model, batches[0])
    out = export_compressed_tensors(model, state, None, tmp_path / "ct")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "int-quantized" and qc["ignore"] == ["lm_head"]
    group = qc["config_groups"]["group_0"]
    assert (group["weights"]["num_bits"], group["weights"]["strategy"], group["weights"]["symmetric"]) == (8, "channel", True)
    acts = group["input_activations"]
    assert (acts["num_bits"], acts["strategy"], acts["dynamic"], acts["symmetric"]) == (8, "token", True, True)
    from safetensors.torch import load_file

    tensors = load_file(str(out / "model.safetensors"))
    assert tensors["model.layers.0.mlp.up_proj.weight"].dtype == torch.int8
    assert tensors["model.layers.0.mlp.up_proj.weight_scale"].shape == (128, 1)
    # transformers' compressed-tensors loader decompresses exactly our weights; its own W8A8
    # forward rounds activations its way (vLLM's is checked in tests/integration/test_vllm_w8a8.py)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ours = model.state_dict()
    for k, v in reloaded.state_dict().items():
        if k in ours and v.dtype.is_floating_point:
            assert torch.equal(v, ours[k]), k
    got = _logits(reloaded, batches[0])
    assert (got - want).abs().max() < 0.02 * want.abs().max()
    dense = export_dense(model, None, tmp_path / "dense", state)
    spec = json.loads((dense / "activation_quant.json").read_text())
    assert spec["num_bits"] == 8 and len(spec["targets"]) == 14
    assert torch.allclose(_logits(load_model(dense), batches[0]), want, atol=1e-5)


def test_a_w8a8_twin_as_a_base_model_trains_without_activation_rounding(model, batches, tmp_path):
    """Retraining from a W8A8 champion copies its dense twin, not the sidecar (round has no gradient)."""
    from components.models import copy_local

    state = compress_model(model, parse_variant("rtn-w8a8"), batches)
    twin = export_dense(model, None, tmp_path / "twin", state)
    copy_local(twin, tmp_path / "base")
    assert (twin / "activation_quant.json").exists() and not (tmp_path / "base" / "activation_quant.json").exists()
    base = load_model(tmp_path / "base")
    assert not any(m._forward_pre_hooks for m in base.modules())


def test_weight_only_per_channel_exports_the_channel_strategy(model, batches, tmp_path):
    """``group_size: channel`` without activation quantization: W8A16 with one scale per row."""
    variant = VariantConfig(name="rtn-w8-channel", quant={"method": "rtn", "bits": 8, "group_size": "channel"})
    state = compress_model(model, variant, batches)
    assert state.channelwise and state.activation_bits is None
    assert not any(m._forward_pre_hooks for m in model.modules())  # weights only: inputs stay float
    out = export_compressed_tensors(model, state, None, tmp_path / "ct")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    group = qc["config_groups"]["group_0"]
    assert qc["format"] == "pack-quantized" and group["input_activations"] is None
    assert (group["weights"]["strategy"], group["weights"]["num_bits"]) == ("channel", 8)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.allclose(_logits(reloaded, batches[0]), _logits(model, batches[0]), atol=1e-4)
