"""Turn grouped samples into padded training tensors and compute trainer log-probs.

Every log-prob the trainer computes goes through ``kernels.logprobs.token_logprobs`` on the
last hidden states, so ``[batch, length, vocab]`` logits are never materialised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from components.engines.transformers_engine import MIN_COMMON_PREFIX, common_prefix_len
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
# A group's rollouts share their prompt, and a micro-batch's prompts often share a long header (an
# environment's system prompt and worked turns). Instead of forwarding [prompt + response] once per
# rollout, the packed layout is a tree: a header common to the micro-batch's distinct prompts is
# laid out once, then each prompt's own suffix, each followed by its responses:
# ``[header | suffix_1 | r_11 | r_12 | ... | suffix_2 | r_21 | ...]`` (one row; without a common
# header, one row per distinct prompt, ``[prompt | r_1 | r_2 | ...]``). Positions are those of the
# unpacked sequence, and a 4-D mask lets a token see, causally, its own segment and its ancestors'
# (a response: its prompt's suffix and the header). Shared keys and values are computed once and
# read by every descendant (in value and gradient), which is the prompt-KV reuse of a cache
# without a cache object, so it also runs under gradient checkpointing.

SHARED_ATTENTION = ("sdpa", "eager")
# The header is shared across prompts only while the one packed row stays this short: attention
# and its dense mask grow with the square of a row's length, so long responses keep one row per
# prompt. 2,560 holds the tools recipe's largest micro-batch (a 250-token header, 4 prompt suffixes
# and 16 episodes of at most 128 tokens), whose attention then keeps about 7 GB for the backward.
MAX_TREE_ROW = 2560


@dataclass
class PackedGroups:
    ids: torch.Tensor  # [U, L] packed tokens
    pos: torch.Tensor  # [U, L] position ids
    seg: torch.Tensor  # [U, L] segment of each token, -1 = padding
    parent: torch.Tensor  # [S] parent segment of each segment, -1 = a root
    rows: torch.Tensor  # [N] packed row of each response token (in ``token_mask`` order)
    cols: torch.Tensor  # [N] packed column whose hidden state predicts it


class _Packer:
    """Rows of tokens with their segments and positions; segments form a forest."""

    def __init__(self) -> None:
        self.ids: list[list[int]] = []
        self.seg: list[list[int]] = []
        self.pos: list[list[int]] = []
        self.parent: list[int] = []

    def new_row(self) -> int:
        for xs in (self.ids, self.seg, self.pos):
            xs.append([])
        return len(self.ids) - 1

    def put(self, row: int, tokens: list[int], first_pos: int, parent: int) -> tuple[int, int]:
        """Append ``tokens`` to ``row`` as a new segment under ``parent``; (its segment, first column)."""
        self.parent.append(parent)
        seg, start = len(self.parent) - 1, len(self.ids[row])
        self.ids[row] += tokens
        self.seg[row] += [seg] * len(tokens)
        self.pos[row] += list(range(first_pos, first_pos + len(tokens)))
        return seg, start


def pack_shared_prompts(batch: TrainBatch) -> PackedGroups:
    """Lay out the batch's common header once, each distinct prompt's suffix once, then its responses."""
    prompts = [tuple(batch.input_ids[r, : int(batch.prompt_lens[r])].tolist()) for r in range(len(batch))]
    distinct = [list(p) for p in dict.fromkeys(prompts)]
    head = common_prefix_len(distinct)
    tree_row = head + sum(len(d) - head for d in distinct) + int(batch.token_mask.sum())
    head = head if head >= MIN_COMMON_PREFIX and tree_row <= MAX_TREE_ROW else 0
    pk = _Packer()
    where: dict[tuple[int, ...], tuple[int, int, int]] = {}  # prompt -> (row, segment, last column)
    if head:
        row = pk.new_row()
        root, _ = pk.put(row, distinct[0][:head], 0, -1)
    for d in distinct:
        if not head:
            row, root = pk.new_row(), -1
        seg, start = pk.put(row, d[head:], head, root)
        where[tuple(d)] = (row, seg, start + len(d) - head - 1)
    rows: list[int] = []
    cols: list[int] = []
    lens = batch.token_mask.sum(-1).long().tolist()
    for r, prompt in enumerate(prompts):
        row, seg, last = where[prompt]
        if lens[r] == 0:
            continue
        _, start = pk.put(row, batch.resp_ids[r, : lens[r]].tolist(), len(prompt), seg)
        rows += [row] * lens[r]
        # Response token 0 is predicted by the prompt's last position, token j by the response's j-1.
        cols += [last] + [start + j for j in range(lens[r] - 1)]
    width = max(len(x) for x in pk.ids)

    def padded(xs: list[list[int]], fill: int) -> torch.Tensor:
        return torch.tensor([x + [fill] * (width - len(x)) for x in xs], dtype=torch.long)
    return PackedGroups(padded(pk.ids, 0), padded(pk.pos, 0), padded(pk.seg, -1),
                        torch.tensor(pk.parent, dtype=torch.long), torch.tensor(rows, dtype=torch.long),
                        torch.tensor(cols, dtype=torch.long))


def visible_segments(parent: torch.Tensor) -> torch.Tensor:
    """[S + 1, S + 1] bool, index 0 = padding: entry [q, k] is True when segment k is q or an
    ancestor of q (padding sees padding only, so no query row is empty)."""
    n = parent.shape[0]
    vis = torch.zeros((n + 1, n + 1), dtype=torch.bool)
    vis[0, 0] = True
    for s in range(n):
        a = s
        while a >= 0:
            vis[s + 1, a + 1] = True
            a = int(parent[a])
    return vis


def shared_attention_mask(seg: torch.Tensor, parent: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """[U, 1, L, L] mask: causal, and a key is visible when its segment is the query's or an ancestor."""
    n = seg.shape[1]
    causal = torch.ones((n, n), dtype=torch.bool, device=seg.device).tril()
    vis = visible_segments(parent).to(seg.device)
    s = seg + 1
    allowed = (causal[None] & vis[s[:, :, None], s[:, None, :]])[:, None]
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
    mask = shared_attention_mask(pk.seg.to(dev), pk.parent, model.config._attn_implementation, dtype)
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
