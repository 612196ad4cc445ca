"""The transformers-engine OpenAI-compatible server, started as a real process and driven by `openai`."""

from __future__ import annotations

import httpx
import openai
import pytest

from components.serving.hf_server import HFServerProcess


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("hf-server") / "server.log"
    with HFServerProcess(tiny_model_dir, log, name="tiny") as srv:
        yield srv
    text = srv.log_text()
    assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=60, max_retries=0)


def _chat(client, **kw):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Say hi"}], **kw)


def test_health_models_and_loopback(server, client):
    assert httpx.get(f"http://127.0.0.1:{server.port}/health").status_code == 200
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert f"Uvicorn running on http://127.0.0.1:{server.port}" in server.log_text()


def test_greedy_is_deterministic_and_max_tokens_is_honoured(client):
    a, b = _chat(client, temperature=0, max_tokens=6), _chat(client, temperature=0, max_tokens=6)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens <= 6
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens
    assert a.choices[0].finish_reason in {"stop", "length"}


def test_seed_fixes_sampling_and_n_gives_n_choices(client, server):
    before = httpx.get(f"http://127.0.0.1:{server.port}/metrics").json()["chat_completions"]
    one = _chat(client, temperature=1.0, max_tokens=8, seed=7)
    two = _chat(client, temperature=1.0, max_tokens=8, seed=7)
    assert one.choices[0].message.content == two.choices[0].message.content
    three = _chat(client, temperature=1.0, max_tokens=8, seed=7, n=3)
    assert len(three.choices) == 3 and [c.index for c in three.choices] == [0, 1, 2]
    assert httpx.get(f"http://127.0.0.1:{server.port}/metrics").json()["chat_completions"] == before + 3


def test_unknown_model_and_stream_are_refused(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        _chat(client, stream=True)
