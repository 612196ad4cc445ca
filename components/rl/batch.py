"""Turn grouped samples into padded training tensors and compute trainer log-probs.

Every log-prob the trainer computes goes through ``kernels.logprobs.token_logprobs`` on the
last hidden states, so ``[batch, length, vocab]`` logits are never materialised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kernels.logprobs import token_logprobs


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # [B, L] right-padded prompt + response
    attention_mask: torch.Tensor  # [B, L]
    prompt_lens: torch.Tensor  # [B]
    resp_ids: torch.Tensor  # [B, T] response tokens (padded with 0)
    resp_mask: torch.Tensor  # [B, T] float: the loss mask (1 = the model's own token; 0 = padding, tool output)
    engine_logp: torch.Tensor  # [B, T]
    versions: torch.Tensor  # [B, T] policy version of each token
    advantages: torch.Tensor  # [B]
    # [B, T] float: 1 = a response token (the model's or, in a multi-turn episode, a tool/template
    # token), 0 = padding. Forwards run over it; the loss and every per-token figure use resp_mask.
    token_mask: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, idx: torch.Tensor | list[int]) -> "TrainBatch":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return TrainBatch(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def build_batch(
    prompts: list[list[int]], responses: list[list[int]], engine_logps: list[list[float]],
    versions: list[list[int]], advantages: list[float], pad_id: int,
    loss_masks: list[list[int] | None] | None = None,
) -> TrainBatch:
    """``loss_masks[i]`` (multi-turn episodes): 1 for the model's tokens of response i, 0 for the
    tool/template tokens, which then carry no gradient; None (or a None entry) = all the model's."""
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
    tmask = rmask.clone()
    for i, m in enumerate(loss_masks or []):
        if m is not None:
            rmask[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
    return TrainBatch(ids, attn, torch.tensor([len(p) for p in prompts]), resp, rmask, elp, ver,
                      torch.tensor(advantages, dtype=torch.float32), tmask)


def lm_head_weight(model: Any) -> torch.Tensor:
    return model.get_output_embeddings().weight


FSDP_HIDDEN = "posttrain_hidden"  # the backbone's forward as a method of an FSDP2 root (see rl.distributed)


def backbone_hidden(model: Any, **inputs: Any) -> torch.Tensor:
    """The decoder's last hidden states; through the root's registered FSDP2 forward method when
    the policy is sharded (so the root's parameters are gathered first)."""
    hidden = getattr(model, FSDP_HIDDEN, None)
    if hidden is not None:
        return hidden(**inputs)
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return backbone(**inputs).last_hidden_state


def response_logprobs(model: Any, batch: TrainBatch, temperature: float = 1.0, chunk_size: int = 1024,
                      with_entropy: bool = True, share_prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Trainer log-probs and entropies ``[B, T]`` of the response tokens (0 at padding; tool tokens
    of a multi-turn episode get values too, which the loss masks out with ``resp_mask``).

    ``share_prompts``: forward each distinct prompt once for all its responses (see below); the
    same values and gradients as the plain path to float rounding."""
    dev = next(model.parameters()).device
    b, t = batch.token_mask.shape
    sel = batch.token_mask.bool().to(dev)
    if share_prompts and can_share_prompts(model):
        h = _shared_hidden(model, batch)
    else:
        h = _plain_hidden(model, batch)[sel]
    tgt = batch.resp_ids.to(dev)[sel]
    logp_flat, ent_flat = token_logprobs(h, lm_head_weight(model), tgt, temperature, chunk_size)
    logp = torch.zeros((b, t), dtype=logp_flat.dtype, device=dev)
    ent = torch.zeros((b, t), dtype=ent_flat.dtype, device=dev)
    logp = logp.masked_scatter(sel, logp_flat)
    ent = ent.masked_scatter(sel, ent_flat)
    return logp, ent


def _plain_hidden(model: Any, batch: TrainBatch) -> torch.Tensor:
    """Hidden states [B, T, H] predicting each response slot, one [prompt + response] row per rollout."""
    dev = next(model.parameters()).device
    ids = batch.input_ids.to(dev)
    hidden = backbone_hidden(model, input_ids=ids, attention_mask=batch.attention_mask.to(dev))  # [B, L, H]
    b, t = batch.token_mask.shape
    # The hidden state at position p+j-1 predicts response token j.
    pos = batch.prompt_lens[:, None] - 1 + torch.arange(t)[None, :]
    pos = pos.clamp(max=ids.shape[1] - 1).to(dev)
    return hidden.gather(1, pos[..., None].expand(b, t, hidden.shape[-1]))


# --- Prefix-shared forward -------------------------------------------------------------------
# A group's rollouts share their prompt. Instead of forwarding [prompt + response] once per
# rollout, each distinct prompt of a micro-batch is laid out once in a packed row followed by all
# of its responses: ``[prompt | r_1 | r_2 | ...]``, positions restarting after the prompt for each
# response, and a 4-D mask that lets a response token see the prompt and the earlier tokens of its
# own response only. The prompt's keys and values are computed once and read by every response
# (in value and gradient), which is the prompt-KV reuse of a cache without a cache object, so it
# also runs under gradient checkpointing.

SHARED_ATTENTION = ("sdpa", "eager")


@dataclass
class PackedGroups:
    ids: torch.Tensor  # [U, L] packed prompt + responses, one row per distinct prompt
    pos: torch.Tensor  # [U, L] position ids
    seg: torch.Tensor  # [U, L] 0 = prompt, k + 1 = k-th response of the row, -1 = padding
    rows: torch.Tensor  # [N] packed row of each response token (in ``resp_mask`` order)
    cols: torch.Tensor  # [N] packed column whose hidden state predicts it


def pack_shared_prompts(batch: TrainBatch) -> PackedGroups:
    """Lay out the batch's distinct prompts once each, followed by their responses."""
    owner: dict[tuple[int, ...], int] = {}
    layout: list[list[int]] = []  # tokens of each packed row
    segs: list[list[int]] = []
    poss: list[list[int]] = []
    responses: list[int] = []  # responses already placed in each packed row
    rows: list[int] = []
    cols: list[int] = []
    lens = batch.token_mask.sum(-1).long().tolist()
    for r in range(len(batch)):
        p = int(batch.prompt_lens[r])
        prompt = tuple(batch.input_ids[r, :p].tolist())
        if prompt not in owner:
            owner[prompt] = len(layout)
            layout.append(list(prompt))
            segs.append([0] * p)
            poss.append(list(range(p)))
            responses.append(0)
        u, t = owner[prompt], lens[r]
        if t == 0:
            continue
        start = len(layout[u])
        responses[u] += 1
        layout[u] += batch.resp_ids[r, :t].tolist()
        segs[u] += [responses[u]] * t
        poss[u] += list(range(p, p + t))
        rows += [u] * t
        # Response token 0 is predicted by the prompt's last position, token j by the response's j-1.
        cols += [p - 1] + [start + j for j in range(t - 1)]
    width = max(len(x) for x in layout)

    def padded(xs: list[list[int]], fill: int) -> torch.Tensor:
        return torch.tensor([x + [fill] * (width - len(x)) for x in xs], dtype=torch.long)
    return PackedGroups(padded(layout, 0), padded(poss, 0), padded(segs, -1),
                        torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long))


def shared_attention_mask(seg: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """[U, 1, L, L] mask: causal, and a key is visible when it is a prompt token or in the query's segment."""
    n = seg.shape[1]
    causal = torch.ones((n, n), dtype=torch.bool, device=seg.device).tril()
    q, k = seg[:, :, None], seg[:, None, :]
    allowed = (causal[None] & ((k == 0) | (k == q)))[:, None]
    if kind == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill(~allowed, torch.finfo(dtype).min)


def can_share_prompts(model: Any) -> bool:
    return getattr(model.config, "_attn_implementation", None) in SHARED_ATTENTION


def _shared_hidden(model: Any, batch: TrainBatch) -> torch.Tensor:
    """Hidden states [N, H] that predict the response tokens, through the prefix-shared layout."""
    dev = next(model.parameters()).device
    pk = pack_shared_prompts(batch)
    dtype = next(model.parameters()).dtype
    mask = shared_attention_mask(pk.seg.to(dev), model.config._attn_implementation, dtype)
    hidden = backbone_hidden(model, input_ids=pk.ids.to(dev), attention_mask=mask, position_ids=pk.pos.to(dev))
    return hidden[pk.rows.to(dev), pk.cols.to(dev)]


def plan_microbatches(group_sizes: list[int], minibatch_size: int, micro_batch_size: int,
                      gen: torch.Generator, whole_groups: bool) -> list[list[torch.Tensor]]:
    """One epoch's order: minibatches (one optimiser step each) of micro-batches (one forward each)
    of rollout indices (rollouts are numbered group after group).

    ``whole_groups=False``: a random permutation of the rollouts, cut into slices. ``True``: a
    random permutation of the groups; a minibatch takes whole groups until it holds at least
    ``minibatch_size`` rollouts, a micro-batch takes whole groups while it stays within
    ``micro_batch_size`` (a larger group is a micro-batch of its own), so a group's prompt is
    shared by all its rollouts in one forward."""
    n = sum(group_sizes)
    if not whole_groups:
        perm = torch.randperm(n, generator=gen)
        slices = [perm[m:m + minibatch_size] for m in range(0, n, minibatch_size)]
        return [[mb[i:i + micro_batch_size] for i in range(0, len(mb), micro_batch_size)] for mb in slices]
    starts = [sum(group_sizes[:g]) for g in range(len(group_sizes))]
    plan: list[list[torch.Tensor]] = []
    mb: list[list[int]] = []
    for g in torch.randperm(len(group_sizes), generator=gen).tolist():
        members = list(range(starts[g], starts[g] + group_sizes[g]))
        if mb and len(mb[-1]) + len(members) <= micro_batch_size:
            mb[-1] += members
        else:
            mb.append(members)
        if sum(len(m) for m in mb) >= minibatch_size:
            plan.append([torch.tensor(m, dtype=torch.long) for m in mb])
            mb = []
    if mb:
        plan.append([torch.tensor(m, dtype=torch.long) for m in mb])
    return plan
