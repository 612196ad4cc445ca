"""One `posttrain ui` (non-default, free ports) shared by the operate tests of this folder."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def posttrain_ui(tmp_path_factory):
    from ui_procs import start_ui, stop

    from components.serving.vllm_server import find_free_port

    state = tmp_path_factory.mktemp("operate") / "state"
    pp = find_free_port()
    mp = find_free_port()
    while mp == pp:
        mp = find_free_port()
    proc, lines = start_ui(state, pp, mp)
    try:
        yield {"state": state, "prefect_port": pp, "mlflow_port": mp, "lines": lines, "proc": proc,
               "prefect": f"http://127.0.0.1:{pp}", "api": f"http://127.0.0.1:{pp}/api",
               "mlflow": f"http://127.0.0.1:{mp}"}
    finally:
        stop(proc)
