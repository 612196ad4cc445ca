"""A small OpenAI-compatible server on the transformers engine (CPU users, the judge reward, tests).

``python -m components.serving.hf_server --model DIR --port P`` serves one checkpoint folder on
127.0.0.1 with FastAPI/uvicorn:

- ``GET /health``: 200 once the model is loaded,
- ``GET /v1/models``: the one served model,
- ``POST /v1/chat/completions``: non-streaming chat completions; the messages go through the
  tokenizer's chat template into :class:`~components.engines.transformers_engine.TransformersEngine`;
  ``temperature`` (0 = greedy), ``top_p``, ``max_tokens`` / ``max_completion_tokens``, ``stop``,
  ``seed`` and ``n`` are honoured,
- ``GET /metrics``: request counters as JSON (``chat_completions``, ``completion_tokens``).

Requests are served one at a time (one model, one lock); each is logged as one line on stderr.
It is a development and test server, not a vLLM replacement: no streaming, no batching across requests.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("posttrain.hf_server")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""


class ChatRequest(BaseModel):
    """The OpenAI chat-completions fields this server reads (others are accepted and ignored)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False


class ServerOptions(BaseModel):
    """How the server runs: the model folder, its served name, the device and the token cap."""

    model_config = ConfigDict(extra="forbid")
    model: Path
    served_model_name: str | None = Field(None, description="default: the folder name")
    device: str = "cpu"
    max_tokens_cap: int = Field(default=1024, ge=1, description="max_tokens above this are cut to it")
    default_max_tokens: int = Field(default=256, ge=1)

    @property
    def name(self) -> str:
        return self.served_model_name or self.model.name


class ChatService:
    """The model behind the routes: loads once, generates under a lock, counts requests."""

    def __init__(self, opts: ServerOptions) -> None:
        from components.engines.transformers_engine import TransformersEngine
        from components.models import load_model, load_tokenizer

        self.opts = opts
        self.engine = TransformersEngine(load_model(opts.model, opts.device), load_tokenizer(opts.model))
        self.lock = threading.Lock()
        self.counters = {"chat_completions": 0, "completion_tokens": 0}

    def complete(self, req: ChatRequest) -> dict[str, Any]:
        from components.engines.base import SamplingParams

        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        max_new = min(req.max_completion_tokens or req.max_tokens or self.opts.default_max_tokens,
                      self.opts.max_tokens_cap)
        params = SamplingParams.model_validate({"temperature": req.temperature, "top_p": req.top_p,
                                                "max_new_tokens": max_new, "stop": stop, "seed": req.seed})
        msgs: list[Any] = [m.model_dump() for m in req.messages]
        with self.lock:
            t0 = time.perf_counter()
            batch = self.engine.generate([msgs], req.n, params)
            samples = batch.groups[0]
            completion_tokens = sum(s.num_tokens for s in samples)
            self.counters["chat_completions"] += 1
            self.counters["completion_tokens"] += completion_tokens
        log.info("chat.completions model=%s n=%d prompt_tokens=%d completion_tokens=%d seconds=%.2f",
                 self.opts.name, req.n, len(batch.prompt_token_ids[0]), completion_tokens, time.perf_counter() - t0)
        choices = [{"index": i, "message": {"role": "assistant", "content": _cut_at_stop(s.text, stop)},
                    "finish_reason": s.finish_reason, "logprobs": None} for i, s in enumerate(samples)]
        prompt_tokens = len(batch.prompt_token_ids[0])
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.opts.name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}


def _cut_at_stop(text: str, stop: list[str]) -> str:
    """OpenAI semantics: the returned text ends before the first stop string."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(cuts)] if cuts else text


def create_app(opts: ServerOptions) -> Any:
    """The FastAPI app serving ``opts.model`` (loaded here, before the first request)."""
    from fastapi import FastAPI, HTTPException

    service = ChatService(opts)
    app = FastAPI(title="posttrain hf_server")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": opts.name, "object": "model", "created": 0, "owned_by": "posttrain"}]}

    @app.get("/metrics")
    def metrics() -> dict[str, int]:
        return dict(service.counters)

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest) -> dict[str, Any]:
        if req.stream:
            raise HTTPException(400, "stream=true is not supported by this server")
        if req.model not in (None, opts.name):
            raise HTTPException(404, f"model {req.model!r} is not served here; served: {opts.name!r}")
        return service.complete(req)

    return app


class HFServerProcess:
    """``python -m components.serving.hf_server`` in a child process: started, health-checked, stopped.

    ``with HFServerProcess(model_dir, log_path) as srv: srv.base_url`` (``http://127.0.0.1:P/v1``);
    the server's stdout and stderr go to ``log_path``.
    """

    def __init__(self, model: Path, log_path: Path, port: int | None = None, name: str | None = None,
                 start_timeout_s: float = 180.0) -> None:
        from components.serving.vllm_server import find_free_port

        self.model, self.log_path, self.name = Path(model), Path(log_path), name or Path(model).name
        self.port = port or find_free_port()
        self.start_timeout_s = start_timeout_s
        self.proc: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> HFServerProcess:
        import subprocess
        import sys

        from components.settings import answers

        cmd = [sys.executable, "-m", "components.serving.hf_server", "--model", str(self.model),
               "--port", str(self.port), "--served-model-name", self.name]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout_s
        while not answers(f"http://127.0.0.1:{self.port}/health", timeout_s=1.0):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hf_server did not become healthy; log:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except Exception:  # noqa: BLE001 - it did not stop on SIGTERM
                self.proc.kill()
                self.proc.wait(5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> HFServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m components.serving.hf_server", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, type=Path, help="checkpoint folder (config, weights, tokenizer)")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import uvicorn

    from components.settings import apply_thread_policy

    apply_thread_policy()
    opts = ServerOptions.model_validate({"model": args.model, "served_model_name": args.served_model_name,
                                         "device": args.device})
    uvicorn.run(create_app(opts), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
