"""Which folder of a compressed variant vLLM is asked to serve (no vLLM needed)."""

import json
import shlex

import pytest

from components.serving.formats import servable_folder, vllm_cpu_refusal
from components.stages.deploy import curl_example


def _variant(root, bits: int | None, dense_sibling: bool = True):
    """A variant payload: ``compressed/`` with a compressed-tensors config of ``bits`` (None = dense)."""
    comp = root / "compressed"
    comp.mkdir(parents=True)
    cfg = {"model_type": "llama"}
    if bits is not None:
        cfg["quantization_config"] = {
            "quant_method": "compressed-tensors", "format": "pack-quantized",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                "num_bits": bits, "type": "int", "symmetric": True, "strategy": "group", "group_size": 64}}},
        }
    (comp / "config.json").write_text(json.dumps(cfg))
    if dense_sibling:
        (root / "model").mkdir()
        (root / "model" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return comp


def test_int8_falls_back_to_the_dense_checkpoint_on_cpu(tmp_path):
    comp = _variant(tmp_path, 8)
    c = servable_folder(comp, gpu=False, avx512=True)  # no CPU int8 kernel, whatever the ISA
    assert c.folder == tmp_path / "model" and c.format == "dense" and c.fallback_from == comp
    assert "int4 only" in c.reason and "compressed-tensors w8a16" in c.reason


def test_int4_needs_avx512_on_cpu_and_anything_serves_on_gpu(tmp_path):
    comp = _variant(tmp_path, 4)
    assert servable_folder(comp, gpu=False, avx512=True).folder == comp
    c = servable_folder(comp, gpu=False, avx512=False)
    assert c.folder == tmp_path / "model" and "AVX-512" in c.reason
    c = servable_folder(comp, gpu=True)
    assert (c.folder, c.format, c.reason) == (comp, "compressed-tensors w4a16", "")


def test_dense_folders_serve_as_they_are(tmp_path):
    comp = _variant(tmp_path, None)
    assert vllm_cpu_refusal(comp, avx512=False) is None
    assert servable_folder(comp, gpu=False, avx512=False).folder == comp
    assert servable_folder(tmp_path / "model", gpu=False).format == "dense"


def test_unservable_without_a_dense_sibling_is_an_error(tmp_path):
    comp = _variant(tmp_path, 8, dense_sibling=False)
    with pytest.raises(ValueError, match="no dense model/ sibling"):
        servable_folder(comp, gpu=False)


def test_curl_example_is_a_valid_chat_request():
    argv = shlex.split(curl_example("http://127.0.0.1:8100/v1", "posttrain-policy"))
    assert argv[:3] == ["curl", "-s", "http://127.0.0.1:8100/v1/chat/completions"]
    body = json.loads(argv[argv.index("-d") + 1])
    assert body["model"] == "posttrain-policy" and body["messages"][0]["role"] == "user"


def test_w8a8_is_served_as_it_is_on_an_avx2_cpu(tmp_path):
    comp = _variant(tmp_path, 8)
    cfg = json.loads((comp / "config.json").read_text())
    group = cfg["quantization_config"]["config_groups"]["group_0"]
    group["weights"].update(strategy="channel", group_size=None)
    group["input_activations"] = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}
    cfg["quantization_config"]["format"] = "int-quantized"
    (comp / "config.json").write_text(json.dumps(cfg))
    assert vllm_cpu_refusal(comp, avx512=False) is None
    c = servable_folder(comp, gpu=False, avx512=False)
    assert (c.folder, c.format, c.fallback_from) == (comp, "compressed-tensors w8a8", None)
    group["weights"]["num_bits"] = 4  # W4A8 has no int8 GEMM path on the CPU
    (comp / "config.json").write_text(json.dumps(cfg))
    assert "W8A8 only" in vllm_cpu_refusal(comp, avx512=True)
