"""``shard_policy`` (FSDP2 ``fully_shard`` per decoder layer, then the root) on a one-rank process
group: one AdamW step of the sharded policy gives the weights of the same step unsharded. On CPU
with gloo in ``make test``; the same test on CUDA with NCCL in ``make test-gpu`` (one GPU: NCCL
refuses two ranks on one device, so the two-rank parity runs on CPU in test_rl_distributed)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from components.models import load_model
from components.rl.distributed import shard_policy, trainable_params


@pytest.fixture
def one_rank_group(request, tmp_path):
    backend = "nccl" if request.param == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield request.param
    dist.destroy_process_group()


@pytest.mark.parametrize("one_rank_group", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)], indirect=True)
def test_a_sharded_step_gives_the_weights_of_the_plain_step(one_rank_group, tiny_model_dir):
    from torch.distributed.tensor import DTensor

    device = one_rank_group
    torch.manual_seed(0)
    plain = load_model(tiny_model_dir).to(device)
    sharded = shard_policy(copy.deepcopy(plain))
    assert any(isinstance(p, DTensor) for p in sharded.parameters())  # really sharded
    ids = torch.randint(0, plain.config.vocab_size, (3, 12), device=device)
    for model in (plain, sharded):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    after, want = trainable_params(sharded), trainable_params(plain)
    assert after.keys() == want.keys()
    start = trainable_params(load_model(tiny_model_dir))
    assert max(float((want[k] - start[k]).abs().max()) for k in want) > 1e-3  # the step moved the weights
    assert max(float((after[k] - want[k]).abs().max()) for k in want) < 1e-5
