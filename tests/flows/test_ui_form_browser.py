"""In a real browser (Playwright driving Debian's chromium), as a user: with `posttrain ui` on
non-default ports and `posttrain serve-flows --recipe smoke` in another shell, open the custom-run
form of `post-training`, see the smoke recipe's values already filled in, submit it unchanged,
see the run complete, then open its MLflow parent run. POSTTRAIN_SAVE_SCREENSHOTS=1 writes the
pictures to docs/screenshots/ (the README's), otherwise to tmp."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from ui_procs import (
    CHROMIUM,
    CHROMIUM_ARGS,
    MLFLOW_UI_PREFS,
    VIEWPORT,
    api,
    deployment,
    flow_runs,
    start_serve_flows,
    stop,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _form_values(page) -> list[str]:
    return page.locator("input, textarea").evaluate_all("els => els.map(e => e.value)")


def _click_submit(page, dep_id: str, out: Path, base: str, before: set) -> dict:
    """Click Submit as a user does: if, half a minute later, the UI is still on the form and the
    server has no new run, click again (a loaded machine once dropped the click, or the UI's request,
    and the form stayed as it was for 5 minutes). Accepted: the UI goes back to the deployment's
    runs, where the new run is listed. A second run a late first click created is cancelled."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    runs_tab = re.compile(rf".*/deployments/deployment/{dep_id}\?tab=Runs")
    submit = page.get_by_role("button", name="Submit")
    for _ in range(4):
        submit.click(timeout=120_000)
        try:
            page.wait_for_url(runs_tab, timeout=30_000)
            break
        except PlaywrightTimeout:
            if [r for r in flow_runs(base, dep_id) if r["id"] not in before]:
                page.wait_for_url(runs_tab, timeout=300_000)  # accepted; the UI is slow to move on
                break
    else:
        page.screenshot(path=str(out / "prefect-run-form-after-submit.png"))
        text = page.locator("body").inner_text()
        raise AssertionError(f"four clicks on Submit: the form did not go back to the runs tab; page text: "
                             f"{text[:800]} ... {text[-1500:]}")
    new = wait_for("the submitted run", lambda: [r for r in flow_runs(base, dep_id) if r["id"] not in before], 60)
    first, *extra = sorted(new, key=lambda r: r["created"])
    for r in extra:
        api(base, "POST", f"/flow_runs/{r['id']}/set_state", {"state": {"type": "CANCELLED"}, "force": True})
    return first


def _submit_form(page, prefect: str, dep_id: str, out: Path, base: str) -> str:
    """Open the custom-run form, check the pre-filled recipe, submit unchanged; the flow run id."""
    from components.recipe import load_recipe

    smoke = load_recipe("smoke")
    page.goto(f"{prefect}/deployments/deployment/{dep_id}/run", wait_until="domcontentloaded", timeout=120_000)
    page.get_by_text("Parameters", exact=True).wait_for(state="visible", timeout=120_000)
    page.wait_for_function("v => [...document.querySelectorAll('input, textarea')].some(e => e.value === v)",
                           arg=smoke.description, timeout=120_000)
    values = _form_values(page)
    # The whole-recipe form starts from the smoke recipe, not from blank defaults; each data
    # source (a choice of source kinds) is shown as JSON.
    src = smoke.curate.sources[0]
    assert smoke.name in values and smoke.description in values, values[:40]
    assert any(f'"name": "{src.name}"' in v and f'"template": "{src.template}"' in v for v in values), values[:40]
    page.screenshot(path=str(out / "prefect-run-form.png"))
    before = {r["id"] for r in flow_runs(base, dep_id)}
    new = _click_submit(page, dep_id, out, base, before)
    return new["id"]


@pytest.mark.slow
def test_submit_the_prefilled_form_and_see_the_run_in_both_uis(posttrain_ui, tmp_path):
    from playwright.sync_api import sync_playwright

    ui, base = posttrain_ui, posttrain_ui["api"]
    out = REPO / "docs" / "screenshots" if os.environ.get("POSTTRAIN_SAVE_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "serve-flows.log"
    serve = start_serve_flows(ui["state"], log, "--recipe", "smoke", PREFECT_RUNNER_POLL_FREQUENCY="5")
    try:
        dep = wait_for("post-training registered", lambda: deployment(base, "post-training"), 240)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport=VIEWPORT)
                page.add_init_script(MLFLOW_UI_PREFS)
                fr_id = _submit_form(page, ui["prefect"], dep["id"], out, base)
                done = wait_for("the form's run to finish", lambda: (lambda r: r if r["state"]["type"] in FINAL else None)(
                    api(base, "GET", f"/flow_runs/{fr_id}").json()), 600, every_s=3)
                assert done["state"]["type"] == "COMPLETED", (done["state"], log.read_text()[-3000:])
                sent = {k: v for k, v in done["parameters"].items() if v is not None}
                assert sent == dep["parameters"]  # submitted unchanged (empty fields come as null)
                page.goto(f"{ui['prefect']}/runs/flow-run/{fr_id}", wait_until="domcontentloaded", timeout=120_000)
                page.get_by_text("Completed").first.wait_for(state="visible", timeout=120_000)
                page.wait_for_timeout(3000)
                page.screenshot(path=str(out / "prefect-form-run.png"))
                _mlflow_parent(page, ui, fr_id, done["name"], out)
            finally:
                browser.close()
    finally:
        stop(serve, timeout_s=90)


def _mlflow_parent(page, ui: dict, fr_id: str, fr_name: str, out: Path) -> None:
    """The MLflow parent run of the flow run: its name, its reward curve and registered model on
    the first screen."""
    from components.settings import Settings
    from components.tracking import Tracker

    trk = Tracker(Settings(state_dir=ui["state"]))
    (parent,) = trk.client.search_runs([trk.experiment_id], f"tags.`prefect.flow_run_id` = '{fr_id}'")
    assert parent.info.run_name == f"smoke-{fr_name}"
    page.goto(f"{ui['mlflow']}/#/experiments/{trk.experiment_id}/runs/{parent.info.run_id}",
              wait_until="domcontentloaded", timeout=120_000)
    page.get_by_text(parent.info.run_name, exact=True).first.wait_for(state="visible", timeout=120_000)
    page.wait_for_timeout(3000)
    page.screenshot(path=str(out / "mlflow-parent-run.png"))
    first_screen = page.locator("body").inner_text()
    for child in ("curate", "rl_train", "evaluate", "deploy"):  # the stage runs are one click away
        assert child in first_screen, child
    rewards = [k for k in parent.data.metrics if k.startswith("reward/")]
    versions = trk.client.search_model_versions(f"run_id = '{parent.info.run_id}'")
    assert "reward/mean" in rewards, sorted(parent.data.metrics)  # the RL reward curve, per step
    assert len(trk.client.get_metric_history(parent.info.run_id, "reward/mean")) >= 2
    assert versions, "the parent run lists the model version it registered"
    for k in rewards:  # the headline reward metrics the parent run logs are on its first screen
        assert k in first_screen, k
    for v in versions:  # and so is the model it registered
        assert v.name in first_screen, v.name
    assert "Registered models" in first_screen
    _mlflow_version(page, ui, versions[0], out)


def _mlflow_version(page, ui: dict, mv, out: Path) -> None:
    """The model version page shows the signature (a string prompt in, one output): MLflow reads
    the MLmodel of the version's source, the model card deploy registers."""
    page.goto(f"{ui['mlflow']}/#/models/{mv.name}/versions/{mv.version}", wait_until="domcontentloaded",
              timeout=120_000)
    page.get_by_text("Inputs (1)").first.click(timeout=120_000)  # the schema's inputs, expanded
    page.get_by_text("prompt (required)").first.wait_for(state="visible", timeout=60_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / "mlflow-model-version.png"))
    text = page.locator("body").inner_text()
    schema = text[text.index("Schema"):]
    assert "prompt (required)\nstring" in schema and "Outputs (1)" in schema, schema[:500]
    assert mv.tags["weights_uri"] in text  # where the weights are, on the same page
