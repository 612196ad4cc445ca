"""Shared fixtures for integration tests: a tiny random Llama checkpoint built locally.

No hub access here, so the model and its tokenizer are made from scratch: a character-level
WordLevel tokenizer (every printable ASCII character is one token, chat markers are special
tokens) and a 2-layer Llama with head size 32, the smallest head size vLLM's CPU attention
kernels accept.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer():
    """A character-level fast tokenizer with a chat template (vocab: 7 specials + 96 chars)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(string.ascii_letters + string.digits + string.punctuation + " \n")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_llama(out_dir: Path, seed: int, tokenizer=None) -> Path:
    """Save a random 2-layer Llama (hidden 64, 2 heads of 32) and its tokenizer to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or build_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    # A std of 1.0 on the output head (default init is 0.02) gives a peaked, seed-specific
    # next-token distribution, so two seeds give visibly different greedy continuations.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


VENV_VLLM = Path(__file__).resolve().parents[2] / ".venv-vllm"
# Tiny server settings. A fixed KV cache skips vLLM's "fraction of free RAM" check, so two
# servers fit beside other jobs: K+V per token = 2 layers x 2 (K, V) x 2 heads x 32 dims x 4 B
# = 1 KiB, so 64 MiB holds 65,536 tokens, far more than 32 sequences x 256 tokens = 8,192.
# float32: this CPU has no native bf16 and the trainer's reference log-probs are fp32.
# inproc_worker: one spawned Python process fewer per server (starts took 66 s instead of 103 s).
TINY_SERVER = dict(
    inproc_worker=True,
    dtype="float32",
    max_model_len=256,
    kv_cache_memory_bytes=64 * 2**20,
    max_num_seqs=32,
    startup_timeout_s=420.0,
)


@pytest.fixture(scope="session")
def vllm_venv() -> Path:
    """The vLLM environment; a clear failure (not a skip) when it has not been built."""
    if not (VENV_VLLM / "bin" / "python").exists():
        pytest.fail(
            f"{VENV_VLLM} is missing: run `make vllm` (deployments/vllm/setup_vllm_env.sh) "
            "before `make test-vllm`",
            pytrace=False,
        )
    return VENV_VLLM


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny checkpoints with the same architecture and tokenizer but different weights."""
    root = tmp_path_factory.mktemp("tiny-llama")
    tok = build_tokenizer()
    return {
        "v1": build_tiny_llama(root / "v1", seed=1, tokenizer=tok),
        "v2": build_tiny_llama(root / "v2", seed=2, tokenizer=tok),
    }


@pytest.fixture(scope="session")
def make_server_cfg(tmp_path_factory: pytest.TempPathFactory):
    """Build a ``VLLMServerConfig`` with the tiny settings above and its own log folder."""
    from components.serving.vllm_server import VLLMServerConfig

    def make(**overrides):
        kw = {**TINY_SERVER, "log_dir": tmp_path_factory.mktemp("vllm-logs"), **overrides}
        return VLLMServerConfig(**kw)

    return make
