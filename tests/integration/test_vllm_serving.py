"""VLLMServer and BlueGreenDeployer against real vLLM servers serving tiny random Llamas.

Server starts cost about a minute each on 2 cores, so one test walks a deployment's whole life:
v1 up, a client through the ``openai`` package, v2 rolled out under load with zero failed
requests, a broken v3 rejected while v2 keeps answering, then stop.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from vllm_poller import CHAT, Poller

from components.engines.base import SamplingParams
from components.engines.vllm_engine import VLLMEngine
from components.serving.bluegreen import BlueGreenDeployer, DeployError
from components.serving.vllm_server import (
    ServerError,
    VLLMEnvMissing,
    VLLMServer,
    VLLMServerConfig,
    pid_alive,
)


def test_missing_env_names_make_vllm(tmp_path: Path) -> None:
    """Needs no vLLM: a missing environment is an error that says how to create it."""
    (tmp_path / "model").mkdir()
    server = VLLMServer(tmp_path / "model", VLLMServerConfig(venv=tmp_path / "no-venv"))
    with pytest.raises(VLLMEnvMissing, match="make vllm"):
        server.start()


def test_command_binds_configured_host_only(tmp_path: Path) -> None:
    """Needs no vLLM: the launch line carries host, port and the dev-mode switch as configured."""
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").touch()
    cfg = VLLMServerConfig(venv=tmp_path / "venv", port=8123, dev_mode=True, served_model_name="m")
    server = VLLMServer(tmp_path, cfg)
    cmd = server.command()
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == "8123"
    assert server._env()["VLLM_SERVER_DEV_MODE"] == "1"
    assert server.base_url == "http://127.0.0.1:8123"
    assert "--data-parallel-size" not in cmd  # one replica: vLLM's default


def test_replicas_become_data_parallel_engines_behind_one_endpoint(tmp_path: Path) -> None:
    """Needs no vLLM: deploy.vllm.replicas / rl_train.vllm.replicas reach `vllm serve` as
    --data-parallel-size, on the same single port (blue/green switches the whole set)."""
    from components.recipe import load_recipe

    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").touch()
    rec = load_recipe("smoke", ["deploy.vllm.replicas=3", "rl_train.vllm.replicas=2"])
    for opts, n in ((rec.deploy.vllm, 3), (rec.rl_train.vllm, 2)):
        server = VLLMServer(tmp_path, opts.server_config(venv=tmp_path / "venv", port=8124))
        cmd = server.command()
        assert cmd[cmd.index("--data-parallel-size") + 1] == str(n)
        assert cmd.count("--port") == 1 and server.base_url == "http://127.0.0.1:8124"



@pytest.mark.vllm
def test_blue_green_lifecycle(vllm_venv, tiny_models, make_server_cfg, tmp_path: Path) -> None:
    state = tmp_path / "deploy" / "state.json"
    deployer = BlueGreenDeployer(state, make_server_cfg(), smoke_max_tokens=8, drain_s=1.0)
    try:
        d1 = deployer.deploy(tiny_models["v1"], "v1", name="tiny")
        assert d1.endpoint == f"http://127.0.0.1:{d1.port}/v1"
        assert 0 < d1.smoke_completion_tokens <= 8 and d1.smoke_latency_s > 0 and d1.smoke_tokens_per_s > 0
        assert json.loads(state.read_text())["deployments"]["tiny"]["model_version"] == "v1"
        assert [d.model_version for d in deployer.list()] == ["v1"]

        client = OpenAI(base_url=d1.endpoint, api_key="EMPTY", max_retries=0)
        r = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, temperature=0)
        assert r.usage.completion_tokens <= 6 and isinstance(r.choices[0].message.content, str)

        poller = Poller(deployer, "tiny")
        poller.start()
        d2 = deployer.deploy(tiny_models["v2"], "v2", name="tiny")
        poller.wait_for_more(5)

        assert poller.failed == []
        assert "v1" in poller.ok and poller.ok[-1] == "v2"
        assert d2.port != d1.port and d2.color != d1.color
        assert not pid_alive(d1.pid) and pid_alive(d2.pid)
        models = httpx.get(f"{d2.endpoint}/models").json()["data"]
        assert {m["id"] for m in models} == {"tiny", "tiny:v2"}
        assert [d.model_version for d in deployer.list()] == ["v2"]

        # The rollout engine can also use a server it did not start; that server has no
        # dev-mode routes (404), and the engine cannot restart it, so it says so.
        eng = VLLMEngine(d2.model_dir, base_url=d2.endpoint)
        assert eng.served_model_name == "tiny"
        batch = eng.generate([CHAT], n=2, params=SamplingParams(max_new_tokens=4, seed=1))
        assert [len(s.token_ids) == len(s.logprobs) for s in batch.groups[0]] == [True, True]
        with pytest.raises(ServerError, match="did not start"):
            eng.update_weights(tiny_models["v1"], version=1)
        eng.close()
        assert pid_alive(d2.pid)

        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "config.json").write_text("{ this is not json")
        with pytest.raises(DeployError, match="v2 still serving") as err:
            deployer.deploy(broken, "v3", name="tiny")
        assert "exited with code" in str(err.value)  # the server's own failure, with its log tail
        assert deployer.current("tiny") == d2
        r = OpenAI(base_url=d2.endpoint, api_key="EMPTY", max_retries=0).chat.completions.create(
            model="tiny", messages=CHAT, max_tokens=4, temperature=0
        )
        assert r.choices[0].finish_reason in ("stop", "length")

        stopped = deployer.stop("tiny")
        assert stopped is not None and stopped.pid == d2.pid
        assert not pid_alive(d2.pid) and deployer.list() == []
    finally:
        deployer.stop_all()


def _engine_successes(endpoint: str) -> dict[str, float]:
    """Finished requests per data-parallel engine, from the server's Prometheus ``/metrics``
    (vLLM labels each engine's counters with ``engine="<rank>"``)."""
    out: dict[str, float] = {}
    for line in httpx.get(endpoint.removesuffix("/v1") + "/metrics", timeout=30).text.splitlines():
        if line.startswith("vllm:request_success_total{"):
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1 : line.index("}")].split(","))
            engine = labels["engine"].strip('"')
            out[engine] = out.get(engine, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


@pytest.mark.vllm
def test_blue_green_across_a_replica_set(vllm_venv, tiny_models, make_server_cfg, tmp_path: Path) -> None:
    """``replicas: 2``: one endpoint, two engine cores (``--data-parallel-size 2``) that both answer
    requests; rolling v2 out replaces the whole set with no failed request."""
    from concurrent.futures import ThreadPoolExecutor

    cfg = make_server_cfg(replicas=2, inproc_worker=False)  # one engine-core process per replica
    deployer = BlueGreenDeployer(tmp_path / "deploy" / "state.json", cfg, smoke_max_tokens=8, drain_s=1.0)
    try:
        d1 = deployer.deploy(tiny_models["v1"], "v1", name="tiny")
        before = _engine_successes(d1.endpoint)
        client = OpenAI(base_url=d1.endpoint, api_key="EMPTY", max_retries=0)
        ask = lambda i: client.completions.create(model="tiny", prompt=f"count {i}", max_tokens=16, temperature=0)  # noqa: E731
        with ThreadPoolExecutor(8) as pool:
            assert all(r.choices[0].text is not None for r in pool.map(ask, range(16)))
        after = _engine_successes(d1.endpoint)
        served = {e: after[e] - before.get(e, 0.0) for e in after}
        assert set(served) == {"0", "1"} and sum(served.values()) == 16, served
        assert min(served.values()) > 0, served  # the API server spread the requests over both engines

        # A 2-replica server starts about 3x slower than one (129 s at load 8-20): the poller's
        # default budget (2000 requests, 400 s) ran out before v2 answered in a `make test-vllm` run.
        poller = Poller(deployer, "tiny", max_requests=50_000, max_s=1200)
        poller.start()
        d2 = deployer.deploy(tiny_models["v2"], "v2", name="tiny")
        poller.wait_for_more(5)
        assert poller.failed == [] and poller.ok[-1] == "v2", (poller.ok[-3:], poller.is_alive())
        assert not pid_alive(d1.pid) and pid_alive(d2.pid)
        assert set(_engine_successes(d2.endpoint)) == {"0", "1"}
    finally:
        deployer.stop_all()
