"""Exports: the compressed-tensors checkpoint reloads in transformers and computes what the
fake-quantized model computes; dense export, sizes and perplexity."""

from __future__ import annotations

import json
import math

import pytest
import torch
from compression_fixtures import VOCAB, tiny_llama
from transformers import AutoModelForCausalLM

from components.compression.apply import compress_model
from components.compression.config import parse_variant
from components.compression.export import dir_size_bytes, export_compressed_tensors, export_dense, perplexity


def _logits(model, batch):
    with torch.inference_mode():
        return model(**batch, use_cache=False).logits


def test_compressed_tensors_reloads_with_matching_logits(model, batches, tmp_path) -> None:
    state = compress_model(model, parse_variant("wanda-2:4+gptq-w4g32"), batches)
    out = export_compressed_tensors(model, state, None, tmp_path / "ct")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    assert qc["format"] == "pack-quantized"
    w = qc["config_groups"]["group_0"]["weights"]
    assert (w["num_bits"], w["group_size"], w["strategy"], w["symmetric"], w["type"]) == (4, 32, "group", True, "int")
    assert qc["config_groups"]["group_0"]["targets"] == ["Linear"] and qc["ignore"] == ["lm_head"]
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.allclose(_logits(reloaded, batches[0]), _logits(model, batches[0]), atol=1e-4)
    # int4 payload: the 14 linears (73728 weights) take 36 KiB packed instead of 288 KiB in fp32
    dense = export_dense(model, None, tmp_path / "dense")
    assert dir_size_bytes(out) < dir_size_bytes(dense) - 200_000


def test_mixed_precision_export_uses_named_targets(model, tmp_path) -> None:
    override = {"model.layers.0.mlp.down_proj": 8, "model.layers.1.mlp.down_proj": 8}
    state = compress_model(model, parse_variant("rtn-w4g32"), [], bits_override=override)
    out = export_compressed_tensors(model, state, None, tmp_path / "ct")
    groups = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]
    by_bits = {g["weights"]["num_bits"]: g["targets"] for g in groups.values()}
    assert by_bits[8] == sorted(override)
    assert len(by_bits[4]) == 12
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    batch = {"input_ids": torch.arange(16).reshape(2, 8)}
    assert torch.allclose(_logits(reloaded, batch), _logits(model, batch), atol=1e-4)


def test_dense_export_round_trips(model, batches, tmp_path) -> None:
    compress_model(model, parse_variant("magnitude-50"), [])
    out = export_dense(model, None, tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(_logits(reloaded, batches[0]), _logits(model, batches[0]))
    assert float((reloaded.model.layers[0].mlp.up_proj.weight == 0).float().mean()) == 0.5


def test_pruned_only_compressed_export_is_dense(model, tmp_path) -> None:
    state = compress_model(model, parse_variant("magnitude-50"), [])
    out = export_compressed_tensors(model, state, None, tmp_path / "ct")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


def test_dir_size_bytes(tmp_path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 20)
    assert dir_size_bytes(tmp_path) == 30


def test_perplexity_of_uniform_logits_is_the_vocab_size(batches) -> None:
    # an all-zero LM head gives uniform next-token probabilities 1/V: NLL = log V, ppl = V
    m = tiny_llama(tie=False)
    with torch.no_grad():
        m.lm_head.weight.zero_()
    assert perplexity(m, batches) == pytest.approx(VOCAB, rel=1e-5)
    assert math.isfinite(perplexity(tiny_llama(), batches))


def test_compressed_tensors_checkpoint_runs_under_the_engines_onednn_linears(model, batches, tmp_path,
                                                                            monkeypatch) -> None:
    """A reloaded compressed-tensors model decompresses its layers on its first forward; inside the
    engine's oneDNN block (``kernels.cpu_linear``) that forward must still work and compute the same
    logits, with the decompressed weights routed (the tiny model's layers are below the size
    threshold, so it is lowered)."""
    from kernels import cpu_linear

    monkeypatch.setattr(cpu_linear, "MIN_WEIGHT_NUMEL", 0)
    state = compress_model(model, parse_variant("rtn-w8"), batches)
    out = export_compressed_tensors(model, state, None, tmp_path / "ct")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with cpu_linear.onednn_linears(batch_hint=4) as mode:
        got = _logits(reloaded, batches[0])
    assert mode is not None and mode.calls > 0
    assert torch.allclose(got, _logits(model, batches[0]), atol=1e-4)
