"""An RL segment whose rollouts come from a real vLLM server (``rl_train.engine: vllm``).

Three GRPO steps of a tiny random Llama on four prompts: the segment starts a server on its
starting weights, reloads the policy after each optimiser step, and stops the server at the end.
A spy around the engine's ``update_weights`` samples a fixed-seed probe just before and just after
every reload, so the test sees each update change what the server generates.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from components.engines.base import SamplingParams
from components.recipe import RLConfig
from components.rl.rollout_engine import start_engine
from components.rl.segment import run_segment
from components.serving.vllm_server import pid_alive

pytestmark = pytest.mark.vllm

ROWS = [{"id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i), "system": None,
         "task": "numeric", "meta": "{}"} for i in range(4)]
PROBE = [[{"role": "user", "content": "Probe: 3 + 4?"}]]
PROBE_PARAMS = SamplingParams(temperature=1.0, max_new_tokens=8, seed=11)
# Same tiny server settings as conftest.TINY_SERVER, minus dtype: "trainer" (fp32 here) is the point.
SERVER = dict(inproc_worker=True, max_model_len=256, kv_cache_memory_bytes=64 * 2**20, max_num_seqs=32,
              startup_timeout_s=420.0)


class _LowercaseReward:
    """The share of lower-case letters in a completion. The tiny random policy is peaked (almost
    every sample starts with the same character) but its 8-character samples differ in the rest,
    so groups have reward variance and every step really moves the weights. (At lr 1e-3 and above
    one step collapses the policy to "uuuuuuuu": no variance left, no later update.)"""

    def __call__(self, text, answer, meta=None):
        from components.rewards import RewardResult

        return RewardResult(score=sum(c.islower() for c in text) / max(1, len(text)), parts={}, error=None)


def _spy_factory(created: list):
    """``start_engine`` plus a probe around each weight update."""

    def factory(*args, **kwargs):
        engine = start_engine(*args, **kwargs)
        real_update = engine.update_weights
        engine.probes = []

        def update_weights(source, version):
            before = engine.generate(PROBE, 2, PROBE_PARAMS).groups[0]
            real_update(source, version)
            after = engine.generate(PROBE, 2, PROBE_PARAMS).groups[0]
            engine.probes.append({"version": version, "update": dict(engine.last_update),
                                  "before": before, "after": after})

        engine.update_weights = update_weights
        created.append(engine)
        return engine

    return factory


def test_rl_segment_with_vllm_engine(vllm_venv, tiny_models, tmp_path: Path, monkeypatch) -> None:
    import components.scoring as scoring

    monkeypatch.setattr(scoring, "get_reward", lambda name: _LowercaseReward())
    cfg = RLConfig(steps=3, segment_steps=3, prompts_per_step=2, group_size=4, max_new_tokens=8, lr=1e-4,
                   minibatch_size=8, micro_batch_size=8, epochs=1, seed=3, engine="vllm", vllm=SERVER)
    created: list = []
    out = tmp_path / "seg"
    logged: list[tuple[int, dict]] = []
    run_segment(base_model_dir=tiny_models["v1"], init_checkpoint=None, rows=ROWS, weights=None, difficulty=None,
                cfg=cfg, start_step=0, end_step=3, out_dir=out, log_metrics=lambda m, s: logged.append((s, m)),
                engine_factory=_spy_factory(created))

    # Completed: a checkpoint and one metrics row per step.
    assert (out / "model" / "model.safetensors").exists()
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [0, 1, 2] and [s for s, _ in logged] == [0, 1, 2]

    # Rollouts of step s were sampled by the policy after s updates.
    for s in range(3):
        versions = set(pq.read_table(out / "rollouts" / f"step-{s:05d}.parquet").column("policy_version").to_pylist())
        assert versions == {s}

    # One in-place reload after each optimiser step but the last (the server stops then).
    (engine,) = created
    assert [p["version"] for p in engine.probes] == [1, 2]
    assert [p["update"]["method"] for p in engine.probes] == ["inplace", "inplace"]
    assert [h.get("weight_sync/version") for h in hist] == [1.0, 2.0, None]
    for p in engine.probes:
        assert all(s.versions == [p["version"]] * s.num_tokens for s in p["after"])
        # Same seed and prompt give the same samples on unchanged weights (test_vllm_engine), so
        # a change in tokens or log-probs is the new weights at work.
        before = [(s.token_ids, s.logprobs) for s in p["before"]]
        after = [(s.token_ids, s.logprobs) for s in p["after"]]
        assert before != after
        # How far one update moves the log-prob of the same token after the same prefix: the size
        # of the error a missed reload would leave (about 0.4-0.9 in a run of this test).
        shift = max(abs(x - y) for b, a in zip(p["before"], p["after"])
                    for k, (x, y) in enumerate(zip(b.logprobs, a.logprobs)) if b.token_ids[: k + 1] == a.token_ids[: k + 1])
        assert shift > 1e-2

    # Engine log-probs of the sampled tokens vs the trainer's recomputation, both fp32 on the same
    # weights (step 0: the exported starting weights; later steps: the reloaded ones). The two
    # sum in different orders (oneDNN/vLLM CPU attention vs ATen), which for a 2-layer model with
    # logits of order 10 is about 1e-5 absolute (seen: <= 1e-5 here and in test_vllm_engine); 1e-3
    # leaves 100x headroom and is still 10x below the shift a missed reload would leave (> 1e-2,
    # asserted on the probes above), so steps 1-2 passing means each reload landed.
    for h in hist:
        assert h["logprob_mismatch_max"] < 1e-3, h

    # The server was stopped at the end of the segment.
    assert engine.server is not None and not pid_alive(engine.server.pid)

