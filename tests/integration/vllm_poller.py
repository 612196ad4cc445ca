"""A client thread that keeps asking whichever server a blue/green state file names."""

from __future__ import annotations

import threading
import time

from openai import OpenAI

from components.serving.bluegreen import BlueGreenDeployer

CHAT = [{"role": "user", "content": "Say hi."}]


class Poller(threading.Thread):
    """Requests in a loop (bounded); records the model version that answered or the failure."""

    def __init__(self, deployer: BlueGreenDeployer, name: str, max_requests: int = 2000, max_s: float = 400):
        super().__init__(daemon=True)
        self.deployer, self.name = deployer, name
        self.max_requests, self.max_s = max_requests, max_s
        self.stop_event = threading.Event()
        self.ok: list[str] = []
        self.failed: list[str] = []

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_event.is_set() and len(self.ok) + len(self.failed) < self.max_requests:
            if time.monotonic() - t0 > self.max_s:
                break
            dep = self.deployer.current(self.name)
            try:
                client = OpenAI(base_url=dep.endpoint, api_key="EMPTY", max_retries=0, timeout=60)
                r = client.chat.completions.create(model=self.name, messages=CHAT, max_tokens=4, temperature=0)
                assert r.choices[0].message.content is not None
                self.ok.append(dep.model_version)
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                self.failed.append(f"{dep.model_version if dep else None}: {exc!r}")
            time.sleep(0.1)

    def wait_for_more(self, n: int, timeout_s: float = 60.0) -> None:
        """Let ``n`` more requests succeed (or time out), then stop and join."""
        target = len(self.ok) + n
        deadline = time.monotonic() + timeout_s
        while len(self.ok) < target and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.2)
        self.stop_event.set()
        self.join(timeout=120)
