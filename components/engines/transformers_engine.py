"""In-process rollout engine on a transformers model: our own KV-cache sampling loop.

Why not ``model.generate``: we need, per sampled token, its log-prob under the same
distribution the trainer recomputes (log_softmax(logits / T)) without keeping
``[steps, batch, vocab]`` logits around, per-token policy versions, and seeded,
reproducible sampling. A 60-line loop over the KV cache gives all of that directly.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from components.engines.base import GenerationBatch, Message, Sample, SamplingParams


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

    def generate(self, prompts: list[list[Message]], n: int, params: SamplingParams) -> GenerationBatch:
        t0 = time.perf_counter()
        prompt_ids = self.encode_prompts(prompts)
        flat = [(i, j) for i in range(len(prompt_ids)) for j in range(n)]
        gen = torch.Generator(device="cpu")
        gen.manual_seed(params.seed if params.seed is not None else torch.seed() % (2**63))
        groups: list[list[Sample]] = [[] for _ in prompt_ids]
        for start in range(0, len(flat), self.max_batch_sequences):
            chunk = flat[start : start + self.max_batch_sequences]
            seqs = [prompt_ids[i] for i, _ in chunk]
            results = self.sample_continuations(seqs, params, gen)
            for (i, j), (toks, lps, reason) in zip(chunk, results):
                groups[i].append(
                    Sample(
                        prompt_index=i,
                        sample_index=j,
                        token_ids=toks,
                        logprobs=lps,
                        text=self.tokenizer.decode(toks, skip_special_tokens=True),
                        finish_reason=reason,
                        versions=[self.policy_version] * len(toks),
                    )
                )
        return GenerationBatch(prompt_token_ids=prompt_ids, groups=groups, seconds=time.perf_counter() - t0)

    @torch.inference_mode()
    def sample_continuations(
        self, seqs: list[list[int]], params: SamplingParams, gen: torch.Generator
    ) -> list[tuple[list[int], list[float], str]]:
        """Sample continuations of token sequences (prompts, or prompt + partial response)."""
        model, dev = self.model, self.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s) :] = torch.tensor(s)
            mask[r, width - len(s) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        was_training = model.training
        model.eval()
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        past = out.past_key_values
        logits = out.logits[:, -1, :]
        bsz = len(seqs)
        tokens: list[list[int]] = [[] for _ in range(bsz)]
        lps: list[list[float]] = [[] for _ in range(bsz)]
        reasons = ["length"] * bsz
        done = torch.zeros(bsz, dtype=torch.bool)
        eos = torch.tensor(sorted(self.eos_ids), dtype=torch.long) if self.eos_ids else None
        temp = params.temperature if params.temperature > 0 else 1.0
        for _ in range(params.max_new_tokens):
            scaled = logits.float() / temp
            logp_full = torch.log_softmax(scaled, dim=-1)
            if params.temperature == 0:
                nxt = scaled.argmax(-1)
            else:
                filt = _filter_logits(scaled, params.top_k, params.top_p)
                probs = torch.softmax(filt, dim=-1).cpu()
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1).to(dev)
            chosen_lp = logp_full.gather(-1, nxt[:, None]).squeeze(-1).cpu()
            nxt_cpu = nxt.cpu()
            for r in range(bsz):
                if done[r]:
                    continue
                tokens[r].append(int(nxt_cpu[r]))
                lps[r].append(float(chosen_lp[r]))
                if eos is not None and int(nxt_cpu[r]) in self.eos_ids:
                    done[r] = True
                    reasons[r] = "stop"
                elif params.stop and self._hit_stop(tokens[r], params.stop):
                    done[r] = True
                    reasons[r] = "stop"
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones((bsz, 1), dtype=mask.dtype, device=dev)], dim=1)
            pos = pos[:, -1:] + 1
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                        past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1, :]
        if was_training:
            model.train()
        return list(zip(tokens, lps, reasons))

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
