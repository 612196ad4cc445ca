"""In-process rollout engine on a transformers model: our own KV-cache sampling loop.

Why not ``model.generate``: we need, per sampled token, its log-prob under the same
distribution the trainer recomputes (log_softmax(logits / T)) without keeping
``[steps, batch, vocab]`` logits around, per-token policy versions, and seeded,
reproducible sampling. The loop is also faster than ``generate`` on the RL workload:

* shared-prefix prefill: each distinct sequence (a prompt shared by its n samples) is
  forwarded once, with the LM head only at its last position, and its KV rows are copied
  to the rows that continue it; a prefix common to all distinct sequences (an environment's
  system prompt and worked turns, a tool round's shared history) is forwarded once for all;
* finished rows leave the batch (their KV rows are dropped), so late steps decode only
  the rows still running;
* one uniform per row and step, inverse CDF over the filtered probabilities: an exact
  draw from the same distribution as ``torch.multinomial``, seeded, and cheaper;
* on the CPU in float32, the linear layers run through oneDNN instead of MKL, each weight
  packed once per ``generate`` call (``kernels.cpu_linear``: same fp32 arithmetic, faster on
  these AMD CPUs; the packed copy lives for the call, ``POSTTRAIN_ONEDNN_LINEAR=0`` turns it off).

RL, difficulty estimation and evaluation all sample through ``sample_continuations``;
``engine_for`` gives each workload its batch size.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch

from components.engines.base import GenerationBatch, Message, Sample, SamplingParams
from kernels.cpu_linear import has_routable_linears, onednn_linears

Workload = Literal["rl", "difficulty", "evaluate"]
# Sequences decoded together, per workload. RL keeps one step's 64 rollouts in one batch.
# Difficulty and evaluation could take larger batches (finished rows leave the batch, so memory
# is not the limit), but on 2 cores greedy evaluation of 128 distinct prompts ran at 20.8 tok/s
# with batch 64 against 16.6 with 128 (tests/bench/bench_engine.py --batch-sweep): they stay at 64
# here; a machine with more cores should raise them.
BATCH_SEQUENCES: dict[str, int] = {"rl": 64, "difficulty": 64, "evaluate": 64}
# Fewer rows than this decode with oneDNN's unpacked weights: packing (~0.2 s for SmolLM2-135M)
# pays from about 4 rows on (at 1 row the packed and unpacked products take the same time).
PACK_MIN_ROWS = 4


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        cum = probs.cumsum(-1)
        remove = cum - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return logits


SAMPLER_BLOCK = 256  # vocabulary entries per block of the two-level inverse CDF


def inverse_cdf_sample(weights: torch.Tensor, u: torch.Tensor, block: int = SAMPLER_BLOCK) -> torch.Tensor:
    """One draw per row from ``weights`` [R, V] (>= 0, need not be normalised) given uniforms ``u`` [R] in [0, 1).

    Inverse CDF in two levels, so no [R, V] cumulative sum is built: the block sums' cdf (float64)
    picks the block holding u * total, then the cdf inside that block picks the token, with the
    remainder rescaled onto the block's own total. Token k is chosen with probability
    weights[k] / total (up to float rounding): exact in distribution, like ``torch.multinomial``,
    for one uniform per row. A zero-weight token is never chosen (its cdf step is empty)."""
    r, v = weights.shape
    nb = -(-v // block)
    w = weights if nb * block == v else torch.nn.functional.pad(weights, (0, nb * block - v))
    w = w.view(r, nb, block)
    bsum = w.sum(-1).double()  # [R, nb]
    bcdf = bsum.cumsum(-1)
    x = u.double() * bcdf[:, -1]
    bi = torch.searchsorted(bcdf, x[:, None], right=True).squeeze(-1).clamp_(max=nb - 1)
    below = torch.where(bi > 0, bcdf.gather(1, (bi - 1).clamp(min=0)[:, None]).squeeze(1), torch.zeros_like(x))
    inner_w = w[torch.arange(r, device=w.device), bi].double()  # [R, block]
    inner = inner_w.cumsum(-1)
    share = ((x - below) / bsum.gather(1, bi[:, None]).squeeze(1)).clamp_(0.0, 1.0)
    j = torch.searchsorted(inner, (share * inner[:, -1])[:, None], right=True).squeeze(-1)
    last = block - 1 - (inner_w > 0).flip(-1).to(torch.uint8).argmax(-1)  # rounding never picks past it
    return (bi * block + torch.minimum(j, last)).clamp_(max=v - 1)


def pick_tokens(logits: torch.Tensor, params: SamplingParams, u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens and their log-probs under log_softmax(logits / T) (T = 1 for greedy)."""
    z = logits.float()
    if params.temperature > 0 and params.temperature != 1.0:
        z = z / params.temperature
    m = z.amax(-1, keepdim=True)
    e = torch.exp(z - m)  # unnormalised probabilities, reused by the sampler
    lse = m.squeeze(-1) + e.sum(-1).log()
    if params.temperature == 0 or u is None:
        nxt = z.argmax(-1)
    elif params.top_k or params.top_p < 1.0:
        nxt = inverse_cdf_sample(torch.softmax(_filter_logits(z, params.top_k, params.top_p), dim=-1), u)
    else:
        nxt = inverse_cdf_sample(e, u)
    return nxt, z.gather(-1, nxt[:, None]).squeeze(-1) - lse


def prompt_uniforms(prompts: int, n: int, params: SamplingParams) -> torch.Tensor | None:
    """The uniforms [prompts * n, max_new_tokens] of ``generate``: prompt i's n samples draw from a
    generator seeded by ``seed + seed_offset + i`` (the vLLM engine's per-prompt seed), so a prompt's
    rollouts are the same whichever batch, chunk or worker it is sampled in. None for greedy."""
    if params.temperature == 0:
        return None
    rows = []
    for i in range(prompts):
        seed = params.seed + params.seed_offset + i if params.seed is not None else torch.seed() % (2**63)
        g = torch.Generator(device="cpu").manual_seed(seed)
        rows.append(torch.rand((n, params.max_new_tokens), generator=g, dtype=torch.float64))
    return torch.cat(rows) if rows else torch.zeros((0, params.max_new_tokens), dtype=torch.float64)


@dataclass
class _Batch:
    """The rows still decoding: their original indices, masks, positions, cache and last logits."""

    rows: torch.Tensor  # [A] index into the caller's sequences (CPU)
    mask: torch.Tensor  # [A, L]
    pos: torch.Tensor  # [A, 1] position of the next token
    past: Any
    logits: torch.Tensor  # [A, V]

    def keep(self, keep: torch.Tensor) -> None:
        """Drop the rows where ``keep`` is False (their KV rows too)."""
        idx = keep.nonzero().squeeze(-1)
        dev_idx = idx.to(self.mask.device)
        self.rows = self.rows[idx]
        self.mask, self.pos = self.mask[dev_idx], self.pos[dev_idx]
        self.past.batch_select_indices(dev_idx)


def _left_pad(seqs: list[list[int]], pad: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[r, width - len(s):] = 1
    return ids.to(dev), mask.to(dev)


# A prefix every distinct sequence starts with (an environment's system prompt and worked turns,
# a few-shot header) is forwarded once, at batch 1, when it is at least this long; shorter ones are
# not worth the extra forward call.
MIN_COMMON_PREFIX = 8


def common_prefix_len(seqs: list[list[int]]) -> int:
    """Tokens all ``seqs`` start with, leaving every sequence at least one token of its own."""
    if len(seqs) < 2:
        return 0
    return min(len(os.path.commonprefix(seqs)), min(len(s) for s in seqs) - 1)


def _forward_prefix(model: Any, prefix: list[int], rows: int, dev: torch.device) -> Any:
    """The KV cache of ``prefix`` forwarded once, repeated for ``rows`` rows."""
    ids = torch.tensor([prefix], dtype=torch.long, device=dev)
    pos = torch.arange(len(prefix), device=dev)[None]
    past = model(input_ids=ids, position_ids=pos, use_cache=True, logits_to_keep=1).past_key_values
    past.batch_repeat_interleave(rows)
    return past


def prefill_shared(model: Any, seqs: list[list[int]], pad: int) -> _Batch:
    """Forward each distinct sequence once (LM head at its last position only) and copy its KV
    rows, mask and logits to every row of ``seqs`` that holds it. A prefix common to all distinct
    sequences is forwarded once for all of them; each then forwards only its own suffix
    (left-padded after the prefix), so prefix, padding and suffix sit in one row of the cache."""
    dev = next(model.parameters()).device
    first: dict[tuple[int, ...], int] = {}
    owner = [first.setdefault(tuple(s), len(first)) for s in seqs]
    distinct = [list(t) for t in first]
    p = common_prefix_len(distinct)
    if p < MIN_COMMON_PREFIX:
        p = 0
    ids, mask = _left_pad([s[p:] for s in distinct], pad, dev)
    pos = (mask.cumsum(-1) - 1).clamp(min=0) + p
    past = _forward_prefix(model, distinct[0][:p], len(distinct), dev) if p else None
    if p:
        mask = torch.cat([torch.ones((len(distinct), p), dtype=mask.dtype, device=dev), mask], 1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=past,
                use_cache=True, logits_to_keep=1)
    expand = torch.tensor(owner, dtype=torch.long, device=dev)
    past = out.past_key_values
    if len(distinct) != len(seqs) or owner != list(range(len(seqs))):
        past.batch_select_indices(expand)
    return _Batch(rows=torch.arange(len(seqs)), mask=mask[expand], pos=pos[expand, -1:] + 1,
                  past=past, logits=out.logits[:, -1, :][expand])


class TransformersEngine:
    """Batched sampling with left padding and a KV cache; CPU fp32 or GPU bf16."""

    def __init__(self, model: Any, tokenizer: Any, max_batch_sequences: int = 64, policy_version: int = 0):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_sequences = max_batch_sequences
        self.policy_version = policy_version
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> set[int]:
        ids = set()
        for src in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(src, int):
                ids.add(src)
            elif isinstance(src, (list, tuple)):
                ids.update(int(x) for x in src)
        return ids

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_prompts(self, prompts: list[list[Message]]) -> list[list[int]]:
        out = []
        for msgs in prompts:
            ids = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            out.append(list(ids))
        return out

    def fast_linears(self, rows: int) -> Any:
        """The block in which this thread's no-grad linears run through oneDNN (``kernels.cpu_linear``),
        weights packed for ``rows`` rows on first use; a block inside another reuses the outer one's."""
        if not has_routable_linears(self.model):
            return contextlib.nullcontext()
        return onednn_linears(batch_hint=rows if rows >= PACK_MIN_ROWS else None)

    def generate(self, prompts: list[list[Message]], n: int, params: SamplingParams) -> GenerationBatch:
        t0 = time.perf_counter()
        prompt_ids = self.encode_prompts(prompts)
        flat = [(i, j) for i in range(len(prompt_ids)) for j in range(n)]
        with self.fast_linears(min(len(flat), self.max_batch_sequences)):
            groups = self._generate_chunks(prompt_ids, flat, n, params)
        return GenerationBatch(prompt_token_ids=prompt_ids, groups=groups, seconds=time.perf_counter() - t0)

    def _generate_chunks(self, prompt_ids: list[list[int]], flat: list[tuple[int, int]], n: int,
                         params: SamplingParams) -> list[list[Sample]]:
        uniforms = prompt_uniforms(len(prompt_ids), n, params)
        groups: list[list[Sample]] = [[] for _ in prompt_ids]
        for start in range(0, len(flat), self.max_batch_sequences):
            chunk = flat[start : start + self.max_batch_sequences]
            u = uniforms[start : start + len(chunk)] if uniforms is not None else None
            results = self.sample_continuations([prompt_ids[i] for i, _ in chunk], params, uniforms=u)
            for (i, j), (toks, lps, reason) in zip(chunk, results):
                groups[i].append(Sample(
                    prompt_index=i, sample_index=j, token_ids=toks, logprobs=lps,
                    text=self.tokenizer.decode(toks, skip_special_tokens=True), finish_reason=reason,
                    versions=[self.policy_version] * len(toks)))
        return groups

    @torch.inference_mode()
    def sample_continuations(
        self, seqs: list[list[int]], params: SamplingParams, gen: torch.Generator | None = None,
        uniforms: torch.Tensor | None = None,
    ) -> list[tuple[list[int], list[float], str]]:
        """Sample continuations of token sequences (prompts, or prompt + partial response).

        Randomness: ``uniforms`` [len(seqs), max_new_tokens] (one per row and step), else one
        uniform per row and step drawn from ``gen``."""
        model = self.model
        was_training = model.training
        model.eval()
        if uniforms is None and params.temperature > 0:
            g = gen if gen is not None else torch.Generator(device="cpu").manual_seed(torch.seed() % (2**63))
            uniforms = torch.rand((params.max_new_tokens, len(seqs)), generator=g, dtype=torch.float64).T
        try:
            with self.fast_linears(len(seqs)):
                toks, lps, lengths, stopped = self._decode(seqs, params, uniforms)
        finally:
            if was_training:
                model.train()
        return [(toks[r, : lengths[r]].tolist(), lps[r, : lengths[r]].tolist(), "stop" if stopped[r] else "length")
                for r in range(len(seqs))]

    def _decode(self, seqs: list[list[int]], params: SamplingParams, uniforms: torch.Tensor | None):
        """The sampling loop: returns token and log-prob matrices [B, max_new], lengths and stop flags."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        bsz, steps = len(seqs), params.max_new_tokens
        toks = torch.zeros((bsz, steps), dtype=torch.long)
        lps = torch.zeros((bsz, steps), dtype=torch.float32)
        lengths = torch.zeros(bsz, dtype=torch.long)
        stopped = torch.zeros(bsz, dtype=torch.bool)
        eos = torch.tensor(sorted(self.eos_ids), dtype=torch.long)
        b = prefill_shared(self.model, seqs, pad)
        for step in range(steps):
            # One uniform per original row and step: a row's draws do not depend on which rows remain.
            u = uniforms[b.rows, step] if uniforms is not None and params.temperature > 0 else None
            nxt, lp = pick_tokens(b.logits, params, u.to(b.logits.device) if u is not None else None)
            nxt_cpu = nxt.cpu()
            toks[b.rows, step], lps[b.rows, step] = nxt_cpu, lp.float().cpu()
            lengths[b.rows] = step + 1
            fin = torch.isin(nxt_cpu, eos)
            if params.stop:
                fin |= torch.tensor([self._hit_stop(toks[r, : step + 1].tolist(), params.stop) for r in b.rows.tolist()])
            stopped[b.rows[fin]] = True
            if bool(fin.all()) or step == steps - 1:
                break
            if bool(fin.any()):
                b.keep(~fin)
                nxt = nxt[(~fin).to(nxt.device)]
            b.mask = torch.cat([b.mask, torch.ones((len(b.rows), 1), dtype=b.mask.dtype, device=b.mask.device)], 1)
            out = self.model(input_ids=nxt[:, None], attention_mask=b.mask, position_ids=b.pos,
                             past_key_values=b.past, use_cache=True)
            b.pos = b.pos + 1
            b.past, b.logits = out.past_key_values, out.logits[:, -1, :]
        return toks, lps, lengths, stopped

    def _hit_stop(self, toks: list[int], stops: list[str]) -> bool:
        tail = self.tokenizer.decode(toks[-16:], skip_special_tokens=True)
        return any(s in tail for s in stops)

    def update_weights(self, source: object, version: int) -> None:
        """Load a state dict, a model's weights, or a checkpoint folder into the engine's model."""
        if isinstance(source, dict):
            self.model.load_state_dict(source)
        elif hasattr(source, "state_dict") and source is not self.model:
            self.model.load_state_dict(source.state_dict())
        elif isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
            from transformers import AutoModelForCausalLM

            fresh = AutoModelForCausalLM.from_pretrained(source, dtype=next(self.model.parameters()).dtype)
            self.model.load_state_dict(fresh.state_dict())
        self.policy_version = version

    def close(self) -> None:
        pass


def engine_for(model: Any, tokenizer: Any, workload: Workload, policy_version: int = 0) -> TransformersEngine:
    """The in-process engine every stage samples with, batched for its workload."""
    return TransformersEngine(model, tokenizer, max_batch_sequences=BATCH_SEQUENCES[workload],
                              policy_version=policy_version)
