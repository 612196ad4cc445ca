"""With the UIs up (`posttrain ui`'s servers on free ports), a run of the flow goes to that
Prefect server and to the sqlite store the MLflow server reads; headless Chromium then renders
the Prefect page of the flow run and the MLflow page of its parent run, each showing the run's
name. POSTTRAIN_SAVE_SCREENSHOTS=1 runs the whole smoke pipeline and writes the README's
pictures to docs/screenshots/; otherwise the run stops after curate and the PNGs go to tmp."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from ui_procs import CHROMIUM, CHROMIUM_ARGS, MLFLOW_UI_PREFS, VIEWPORT

REPO = Path(__file__).resolve().parents[2]
SAVE = os.environ.get("POSTTRAIN_SAVE_SCREENSHOTS") == "1"


@pytest.fixture(scope="module")
def uis(tmp_path_factory):
    from components.serving.vllm_server import find_free_port
    from components.settings import Settings
    from components.ui import start_uis, stop_uis

    state = tmp_path_factory.mktemp("ui-state")
    pp = find_free_port()
    mp = find_free_port()
    while mp == pp:
        mp = find_free_port()
    procs = start_uis(Settings(state_dir=state), prefect_port=pp, mlflow_port=mp, wait_s=180)
    try:
        yield {"state": state, "prefect": f"http://127.0.0.1:{pp}", "mlflow": f"http://127.0.0.1:{mp}"}
    finally:
        stop_uis(procs)


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])  # IHDR width, height


def _shot(page, url: str, text: str, out: Path) -> None:
    page.goto(url, wait_until="domcontentloaded", timeout=120_000)
    name = page.get_by_text(text, exact=True).first
    name.wait_for(state="visible", timeout=120_000)
    assert name.is_visible()
    page.wait_for_timeout(3000)  # let the rest of the page (graph, tables) settle for the picture
    page.screenshot(path=str(out))
    assert _png_size(out) == (VIEWPORT["width"], VIEWPORT["height"])


@pytest.mark.slow
def test_run_shows_in_both_uis_and_screenshots(uis, tmp_path):
    from playwright.sync_api import sync_playwright

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "POSTTRAIN_"))}
    # What `posttrain run` does in a second shell while `posttrain ui` runs (here on free ports).
    env.update(POSTTRAIN_STATE_DIR=str(uis["state"]), POSTTRAIN_PREFECT_API_URL=f"{uis['prefect']}/api",
               POSTTRAIN_MLFLOW_UI_URL=uis["mlflow"])
    summary = tmp_path / "summary.json"
    stages = [] if SAVE else ["--stages", "curate"]
    subprocess.run([sys.executable, "-m", "flows.post_training", "--recipe", "smoke", *stages,
                    "--summary", str(summary)], env=env, cwd=REPO, check=True, timeout=900,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = json.loads(summary.read_text())

    # The flow run is in the UI's Prefect server (not an ephemeral one) ...
    fr = httpx.get(f"{uis['prefect']}/api/flow_runs/{s['flow_run_id']}", timeout=30).json()
    assert fr["state"]["type"] == "COMPLETED"
    # ... and the MLflow server (same sqlite db) serves its parent run.
    run = httpx.get(f"{uis['mlflow']}/api/2.0/mlflow/runs/get", params={"run_id": s["mlflow_run_id"]},
                    timeout=30).json()["run"]
    assert run["info"]["run_name"] == f"smoke-{fr['name']}"
    assert run["info"]["status"] == "FINISHED"

    out = REPO / "docs" / "screenshots" if SAVE else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.add_init_script(MLFLOW_UI_PREFS)
            _shot(page, f"{uis['prefect']}/runs/flow-run/{fr['id']}", fr["name"], out / "prefect-flow-run.png")
            _shot(page, f"{uis['mlflow']}/#/experiments/{run['info']['experiment_id']}/runs/{s['mlflow_run_id']}",
                  run["info"]["run_name"], out / "mlflow-run.png")
        finally:
            browser.close()
