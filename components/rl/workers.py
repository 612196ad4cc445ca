"""Rollout workers: N engine replicas as Ray actors behind the ``RolloutEngine`` interface.

``RolloutWorkerPool.generate`` splits a call's prompts into N contiguous shares, one per actor,
and passes each share its offset (``SamplingParams.seed_offset``): the engines seed every prompt
by ``seed + offset + i``, so N workers produce the rollouts of one (same token ids; log-probs
within float tolerance, the batches differ in shape). ``update_weights`` puts the policy's
weights in Ray's object store once and every actor loads them (LoRA policies send their merged
weights, as the vLLM path does: the actors hold plain models). Every ``ray.get`` is bounded by
``timeout_s``; an actor that died or hangs fails the call with one ``RolloutWorkerError``.

``ray_session`` gives the segment its Ray: the cluster at ``POSTTRAIN_RAY_ADDRESS`` when set, the
one this process already joined, else a local Ray on 127.0.0.1 that it shuts down at the end.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import torch

from components.engines.base import GenerationBatch, Message, SamplingParams

ACTOR_PREFIX = "posttrain-rl"


class RolloutWorkerError(RuntimeError):
    """A rollout or learner actor died or did not answer in time; the segment fails with it."""


def ray_address() -> str | None:
    """The Ray cluster to join (``POSTTRAIN_RAY_ADDRESS``); None: this process's own Ray."""
    return os.environ.get("POSTTRAIN_RAY_ADDRESS") or None


@contextlib.contextmanager
def ray_session(num_cpus: int) -> Iterator[None]:
    """Ray for one segment: join ``ray_address()`` or the Ray this process already runs, else
    start a local one on 127.0.0.1 (no dashboard) and shut it down on exit."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = ray_address()
    # The actors see the driver's code (PYTHONPATH) and never spin-wait in OpenMP on a shared machine.
    env_vars = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    if os.environ.get("PYTHONPATH"):
        env_vars["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env = {"env_vars": env_vars}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", runtime_env=env,
                 log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def bounded_get(refs: list[Any], timeout_s: float, what: str) -> list[Any]:
    """``ray.get`` of ``refs`` that fails fast, with one clear error, when any actor dies (the
    others may be blocked in a collective waiting for it) or none answers within ``timeout_s``."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    deadline = time.monotonic() + timeout_s
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RolloutWorkerError(f"{what}: no answer from the Ray actors within {timeout_s:.0f} s")
            ray.get(ready)  # raises the actor's death or the task's error now
        return ray.get(list(refs))
    except RayActorError as e:
        raise RolloutWorkerError(f"{what}: a Ray actor died ({type(e).__name__}); rerun to resume from the "
                                 "last completed segment") from e
    except RayTaskError as e:
        raise RolloutWorkerError(f"{what}: {e.cause!r}") from e


def shares(total: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) shares of ``total`` items over ``parts`` workers (the first get the extra)."""
    base, extra = divmod(total, parts)
    out, start = [], 0
    for k in range(parts):
        end = start + base + (1 if k < extra else 0)
        out.append((start, end))
        start = end
    return out


class _RolloutWorker:
    """One engine replica (a Ray actor): a transformers engine on a copy of the policy."""

    def __init__(self, model_dir: str, device: str, dtype: torch.dtype, threads: int, policy_version: int) -> None:
        torch.set_num_threads(threads)
        from components.engines.transformers_engine import engine_for
        from components.models import load_model, load_tokenizer

        model = load_model(Path(model_dir), device, dtype)
        self.engine = engine_for(model, load_tokenizer(Path(model_dir)), "rl", policy_version=policy_version)

    def generate(self, prompts: list[list[Message]], n: int, params: SamplingParams) -> GenerationBatch:
        return self.engine.generate(prompts, n, params)

    def update_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        missing, unexpected = self.engine.model.load_state_dict(state, strict=False)
        if unexpected or any(k != "lm_head.weight" for k in missing):
            raise ValueError(f"weights do not fit the worker's model: missing {missing}, unexpected {unexpected}")
        self.engine.policy_version = version


class RolloutWorkerPool:
    """N rollout actors with the engine interface: ``generate``, ``update_weights``,
    ``policy_version``, ``close``. On CUDA each actor takes one GPU; on CPU ``threads`` threads."""

    def __init__(self, workers: int, model: Any, model_dir: Path, policy_version: int, dtype: torch.dtype,
                 threads: int = 1, timeout_s: float = 600.0) -> None:
        import ray

        self.policy_version = policy_version
        self.timeout_s = timeout_s
        tag = uuid.uuid4().hex[:8]
        device = "cuda" if next(model.parameters()).device.type == "cuda" else "cpu"  # one GPU per actor on CUDA
        actor: Any = ray.remote(_RolloutWorker)
        self.actors: list[Any] = [actor.options(name=f"{ACTOR_PREFIX}-rollout-{tag}-{k}", max_restarts=0,
                                                num_gpus=1 if device == "cuda" else 0).remote(
            str(model_dir), device, dtype, threads, policy_version) for k in range(workers)]
        self.update_weights(model, policy_version)

    def generate(self, prompts: list[list[Message]], n: int, params: SamplingParams) -> GenerationBatch:
        parts = [(a, b) for a, b in shares(len(prompts), len(self.actors)) if b > a]
        refs = [actor.generate.remote(prompts[a:b], n, params.model_copy(update={"seed_offset": params.seed_offset + a}))
                for actor, (a, b) in zip(self.actors, parts)]
        results: list[GenerationBatch] = bounded_get(refs, self.timeout_s, "rollout workers")
        out = GenerationBatch(prompt_token_ids=[], groups=[], seconds=max((r.seconds for r in results), default=0.0))
        for (a, _), r in zip(parts, results):
            out.prompt_token_ids.extend(r.prompt_token_ids)
            for group in r.groups:
                for s in group:
                    s.prompt_index += a
                out.groups.append(group)
        return out

    def update_weights(self, source: object, version: int) -> None:
        """Send the policy's weights (a model, or a state dict) to every actor as ``version``."""
        import ray

        from components.rl.rollout_engine import policy_state_dict

        state = source if isinstance(source, dict) else policy_state_dict(source)
        ref = ray.put({k: v.detach().to("cpu").contiguous() for k, v in state.items()})
        bounded_get([a.update_weights.remote(ref, version) for a in self.actors], self.timeout_s,
                    "rollout workers (weights)")
        self.policy_version = version

    def close(self) -> None:
        import ray

        for a in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
        self.actors = []
