"""The learner on several processes: W Ray actors, one ``torch.distributed`` rank each.

Every rank holds the whole policy, its optimiser and (with a KL term) the reference model. For
each optimiser step all ranks build the same micro-batch plan; rank r runs micro-batches
r, r + W, ...; each micro-batch's gradient is scaled by its share of the *global* step (as in one
process), so an all-reduce SUM gives every rank the single-process gradient and the same clipped
AdamW step. The global batch and the loss normalisation therefore do not depend on W. gloo on
CPU (one thread per rank unless configured), NCCL on CUDA.

Why actors rather than Ray Train's ``TorchTrainer``: the learner lives for a segment and is driven
step by step by the segment loop (rollouts in between), which is a call per step on long-lived
actors; ``TorchTrainer.fit`` runs one training function to completion and would need the
rollouts fed through a side channel. The driver keeps its own copy of the policy: after each
update it takes rank 0's trainable parameters (for the rollout engine and the checkpoint), and
rank 0's optimiser state is what the segment checkpoint stores.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from components.rl.batch import TrainBatch
    from components.rl.config import RLConfig
    from components.rl.learner import UpdateResult


class LearnerConfig(BaseModel):
    """``rl_train.learner``: how many processes train the policy."""

    model_config = ConfigDict(extra="forbid")

    world_size: int = Field(1, ge=1, description="torch.distributed ranks (Ray actors); 1 = in process")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on CUDA, gloo on CPU")
    threads: int = Field(1, ge=1, description="torch threads per rank")
    sharding: Literal["none", "fsdp2"] = Field(
        "none", description="none: every rank holds the whole policy (gradients all-reduced); fsdp2: "
        "torch fully_shard per decoder layer and the root, so parameters, gradients and AdamW states are "
        "sharded over the ranks (world_size 1 trains in process, unsharded)")


def trainable_params(model: Any) -> dict[str, torch.Tensor]:
    """The trainable parameters on the CPU; a sharded (FSDP2) policy's are gathered, which is a
    collective: every rank must call it."""
    from torch.distributed.tensor import DTensor

    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().to("cpu").clone()
            for n, p in model.named_parameters() if p.requires_grad}


def shard_policy(model: Any) -> Any:
    """FSDP2: ``fully_shard`` each decoder layer, then the root. Gradients are summed over the
    ranks (divide factor 1, plain SUM: each micro-batch's loss already carries its share of the global step),
    and the backbone's forward becomes a root forward method, since the learner calls the decoder
    and the output embedding separately (``batch.backbone_hidden``)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

    from components.rl.batch import FSDP_HIDDEN

    layers = set(getattr(model, "_no_split_modules", None) or [])
    for m in list(model.modules()):
        if type(m).__name__ in layers:
            fully_shard(m)
    fully_shard(model)
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    setattr(model, FSDP_HIDDEN, lambda **inputs: backbone(**inputs).last_hidden_state)
    register_fsdp_forward_method(model, FSDP_HIDDEN)
    for m in model.modules():
        if isinstance(m, FSDPModule):  # per module: neither setting recurses
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM
    return model


def load_trainable(model: Any, params: dict[str, torch.Tensor]) -> None:
    own = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in params.items():
            own[n].copy_(v.to(own[n].device))


class _LearnerRank:
    """One rank (a Ray actor): the policy, its ``Learner`` and the process group."""

    def __init__(self, cfg: RLConfig, rank: int, base_model_dir: str, device: str, dtype: torch.dtype) -> None:
        from components.rl.policy import build_policy, enable_gradient_checkpointing, reference_policy

        torch.set_num_threads(cfg.learner.threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        self.cfg, self.rank, self.device = cfg, rank, device
        self.model = build_policy(cfg, Path(base_model_dir), None, device, dtype)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.ref = reference_policy(cfg, Path(base_model_dir), device, dtype)
        self.learner: Any = None  # built in init_group (FSDP2 shards the policy there, before the optimiser)

    def address(self) -> tuple[str, int]:
        """Where rank 0's rendezvous listens: this node's address and a free port."""
        import socket

        import ray

        host = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((host, 0))
            return host, int(s.getsockname()[1])

    def init_group(self, host: str, port: int, timeout_s: float) -> None:
        import torch.distributed as dist

        backend = self.cfg.learner.backend
        if backend == "auto":
            backend = "nccl" if self.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=self.rank,
                                world_size=self.cfg.learner.world_size, timeout=timedelta(seconds=timeout_s))
        from components.rl.learner import Learner

        sharded = self.cfg.learner.sharding == "fsdp2"
        if sharded:
            shard_policy(self.model)
            if self.ref is not None:
                shard_policy(self.ref)
        self.learner = Learner(self.cfg, self.model, self.ref, rank=self.rank,
                               world_size=self.cfg.learner.world_size, sharded=sharded)

    def set_params(self, params: dict[str, torch.Tensor]) -> None:
        """The driver's weights, loaded before the process group (and any sharding) exists."""
        load_trainable(self.model, params)

    def load_state(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state)

    def state(self) -> dict[str, Any]:
        return self.learner.state_dict()

    def update(self, tb: TrainBatch, group_sizes: list[int], from_engine: bool, step: int) -> tuple[Any, Any]:
        res = self.learner.update(tb, group_sizes, None, step, from_engine=from_engine)
        if self.learner.sharded:
            params = trainable_params(self.model)  # a gather every rank takes part in
            return res, (params if self.rank == 0 else None)
        return res, (trainable_params(self.model) if self.rank == 0 else None)

    def scheduler_step(self) -> float:
        return self.learner.scheduler_step()


class DistributedLearner:
    """The ``Learner`` interface (update, state_dict, load_state_dict, scheduler_step) over W ranks."""

    ref_model = None  # each rank holds its own reference model

    def __init__(self, cfg: RLConfig, model: Any, base_model_dir: Path, device: str, dtype: torch.dtype) -> None:
        import ray

        from components.rl.workers import ACTOR_PREFIX, bounded_get

        self.cfg, self.model, self.timeout_s = cfg, model, cfg.ray_timeout_s
        self._get = bounded_get
        tag, world = uuid.uuid4().hex[:8], cfg.learner.world_size
        opts: dict[str, Any] = {"max_restarts": 0}
        if device.startswith("cuda"):
            opts["num_gpus"] = 1
        actor: Any = ray.remote(_LearnerRank)
        self.ranks: list[Any] = [actor.options(name=f"{ACTOR_PREFIX}-learner-{tag}-{r}", **opts).remote(
            cfg, r, str(base_model_dir), device, dtype) for r in range(world)]
        try:
            params = ray.put(trainable_params(model))
            self._call([a.set_params.remote(params) for a in self.ranks], "learner weights")
            host, port = self._call([self.ranks[0].address.remote()], "learner start")[0]
            self._call([a.init_group.remote(host, port, self.timeout_s) for a in self.ranks], "learner process group")
        except Exception:
            self.close()
            raise

    def _call(self, refs: list[Any], what: str) -> list[Any]:
        return self._get(refs, self.timeout_s, what)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import ray

        ref = ray.put({"optimizer": state["optimizer"], "scheduler": state["scheduler"]})
        self._call([a.load_state.remote(ref) for a in self.ranks], "learner resume")

    def state_dict(self) -> dict[str, Any]:
        """Rank 0's optimiser and scheduler state (every rank holds the same; sharded, every rank
        takes part in gathering the full state, in the format of a single-process learner)."""
        ranks = self.ranks if self.cfg.learner.sharding == "fsdp2" else self.ranks[:1]
        return self._call([a.state.remote() for a in ranks], "learner state")[0]

    def scheduler_step(self) -> float:
        return float(self._call([a.scheduler_step.remote() for a in self.ranks], "learner schedule")[0])

    def update(self, tb: TrainBatch, group_sizes: list[int], engine: Any, step: int) -> UpdateResult:
        """One update on every rank; the driver's policy takes rank 0's new weights."""
        import ray

        from components.rl.learner import engine_logps_are_old

        from_engine = engine_logps_are_old(engine, self.model, tb)
        ref = ray.put(tb)
        out = self._call([a.update.remote(ref, group_sizes, from_engine, step) for a in self.ranks],
                         f"learner step {step}")
        merged = out[0][0]
        merged.entries = [e for res, _ in out for e in res.entries]
        merged.gather()
        load_trainable(self.model, out[0][1])
        return merged

    def close(self) -> None:
        import ray

        for a in self.ranks:
            with contextlib.suppress(Exception):
                ray.kill(a)
        self.ranks = []
