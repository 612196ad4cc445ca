"""Turn grouped samples into padded training tensors and compute trainer log-probs.

Every log-prob the trainer computes goes through ``kernels.logprobs.token_logprobs`` on the
last hidden states, so ``[batch, length, vocab]`` logits are never materialised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.logprobs import token_logprobs


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # [B, L] right-padded prompt + response
    attention_mask: torch.Tensor  # [B, L]
    prompt_lens: torch.Tensor  # [B]
    resp_ids: torch.Tensor  # [B, T] response tokens (padded with 0)
    resp_mask: torch.Tensor  # [B, T] float
    engine_logp: torch.Tensor  # [B, T]
    versions: torch.Tensor  # [B, T] policy version of each token
    advantages: torch.Tensor  # [B]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, idx: torch.Tensor | list[int]) -> "TrainBatch":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return TrainBatch(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def build_batch(
    prompts: list[list[int]], responses: list[list[int]], engine_logps: list[list[float]],
    versions: list[list[int]], advantages: list[float], pad_id: int,
) -> TrainBatch:
    b = len(prompts)
    t = max(1, max(len(r) for r in responses))
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    attn = torch.zeros((b, width), dtype=torch.long)
    resp = torch.zeros((b, t), dtype=torch.long)
    rmask = torch.zeros((b, t), dtype=torch.float32)
    elp = torch.zeros((b, t), dtype=torch.float32)
    ver = torch.zeros((b, t), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        seq = p + r
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attn[i, : len(seq)] = 1
        if r:
            resp[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            rmask[i, : len(r)] = 1.0
            elp[i, : len(r)] = torch.tensor(engine_logps[i], dtype=torch.float32)
            ver[i, : len(r)] = torch.tensor(versions[i], dtype=torch.long)
    return TrainBatch(ids, attn, torch.tensor([len(p) for p in prompts]), resp, rmask, elp, ver,
                      torch.tensor(advantages, dtype=torch.float32))


def lm_head_weight(model) -> torch.Tensor:
    return model.get_output_embeddings().weight


def response_logprobs(model, batch: TrainBatch, temperature: float = 1.0, chunk_size: int = 1024,
                      with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Trainer log-probs and entropies ``[B, T]`` of the response tokens (0 where masked)."""
    dev = next(model.parameters()).device
    ids = batch.input_ids.to(dev)
    attn = batch.attention_mask.to(dev)
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    hidden = backbone(input_ids=ids, attention_mask=attn).last_hidden_state  # [B, L, H]
    b, t = batch.resp_mask.shape
    # The hidden state at position p+j-1 predicts response token j.
    pos = batch.prompt_lens[:, None] - 1 + torch.arange(t)[None, :]
    pos = pos.clamp(max=ids.shape[1] - 1).to(dev)
    sel = batch.resp_mask.bool().to(dev)
    h = hidden.gather(1, pos[..., None].expand(b, t, hidden.shape[-1]))[sel]
    tgt = batch.resp_ids.to(dev)[sel]
    logp_flat, ent_flat = token_logprobs(h, lm_head_weight(model), tgt, temperature, chunk_size)
    logp = torch.zeros((b, t), dtype=logp_flat.dtype, device=dev)
    ent = torch.zeros((b, t), dtype=ent_flat.dtype, device=dev)
    logp = logp.masked_scatter(sel, logp_flat)
    ent = ent.masked_scatter(sel, ent_flat)
    return logp, ent
