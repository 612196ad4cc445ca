"""Tiny random Llama models and calibration batches for the compression tests (no downloads)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 128


def tiny_llama(seed: int = 0, tie: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=tie,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def make_batches(n_batches: int = 2, batch: int = 4, seq: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(0, VOCAB, (batch, seq), generator=g)
        mask = torch.ones_like(ids)
        mask[0, seq // 2 :] = 0  # right padding on one row
        out.append({"input_ids": ids, "attention_mask": mask})
    return out
