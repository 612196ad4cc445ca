"""A scheduled retrain fires: with the UI's Prefect server up, `posttrain serve-flows --cron
"* * * * *"` registers `recurring-retrain` with an every-minute schedule; the server's scheduler
creates scheduled flow runs by itself, serve-flows runs the first one to COMPLETED on the `smoke`
recipe, SIGTERM from another process stops serve-flows, and the server log holds no traceback.

With SQLAlchemy 2.1 (Prefect 3.8.8's scheduler service fails every loop with "Can't evaluate
bulk DML statement") no scheduled run is ever created and this test fails.
"""

from __future__ import annotations

import signal
import time
from datetime import datetime

import pytest
from ui_procs import deployment, flow_runs, start_serve_flows, stop, tracebacks, wait_for

EVERY_MINUTE = "* * * * *"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _missed_runs_are_cancelled_on_restart(ui: dict, base: str, dep_id: str, tmp_path) -> None:
    """A scheduled run that went late while serve-flows was stopped is not caught up by the next
    serve-flows: it is CANCELLED with a message saying why, and never runs (this also keeps the
    shared server free of a backlog of every-minute retrains for the tests after this one)."""
    waiting = [r for r in flow_runs(base, dep_id) if r["auto_scheduled"] and r["state"]["type"] == "SCHEDULED"]
    assert waiting, "the scheduler had created the runs of the next minutes"
    nxt = min(waiting, key=lambda r: _ts(r["expected_start_time"]))
    time.sleep(max(0.0, _ts(nxt["expected_start_time"]) - time.time() + 1))  # now late
    log = tmp_path / "serve-flows-again.log"
    serve = start_serve_flows(ui["state"], log, "--recipe", "smoke", PREFECT_RUNNER_POLL_FREQUENCY="5")
    try:
        gone = wait_for("the missed run to be cancelled", lambda: (lambda r: r if r["state"]["type"] != "SCHEDULED"
                        else None)(next(r for r in flow_runs(base, dep_id) if r["id"] == nxt["id"])), 240, every_s=2)
        assert gone["state"]["type"] == "CANCELLED" and "not caught up" in gone["state"]["message"], gone["state"]
        assert gone["run_count"] == 0 and gone["total_run_time"] == 0  # it never ran
        assert "missed while it was stopped" in log.read_text()
    finally:
        code = stop(serve, signal.SIGTERM, timeout_s=90)
    assert code == 0, log.read_text()[-3000:]


def _ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


@pytest.mark.slow
def test_every_minute_retrain_is_scheduled_and_completes(posttrain_ui, tmp_path):
    ui, base = posttrain_ui, posttrain_ui["api"]
    log = tmp_path / "serve-flows.log"
    # The runner polls every 10 s by default; 5 s keeps the wait short.
    serve = start_serve_flows(ui["state"], log, "--recipe", "smoke", "--cron", EVERY_MINUTE,
                              PREFECT_RUNNER_POLL_FREQUENCY="5")
    try:
        dep = wait_for("recurring-retrain registered", lambda: (lambda d: d if d and d["schedules"] and d[
            "schedules"][0]["schedule"].get("cron") == EVERY_MINUTE else None)(deployment(base, "recurring-retrain")), 240)
        assert dep["parameters"] == {"recipe": "smoke"}
        registered = time.time()
        # The scheduler (not this test, not serve-flows) creates the runs of the next minutes.
        scheduled = wait_for("the scheduler to create runs", lambda: [
            r for r in flow_runs(base, dep["id"]) if r["auto_scheduled"]], 90)
        first = min(scheduled, key=lambda r: _ts(r["expected_start_time"]))
        assert _ts(first["expected_start_time"]) - registered < 75  # the next minute
        done = wait_for("the first scheduled run to finish", lambda: (lambda r: r if r["state"]["type"] in FINAL else None)(
            next(r for r in flow_runs(base, dep["id"]) if r["id"] == first["id"])), 180, every_s=2)
        assert done["state"]["type"] == "COMPLETED", (done["state"], log.read_text()[-3000:])
        assert done["parameters"]["recipe"] == "smoke"
    finally:
        code = stop(serve, signal.SIGTERM, timeout_s=90)
    assert code == 0, log.read_text()[-3000:]
    _missed_runs_are_cancelled_on_restart(ui, base, dep["id"], tmp_path)
    server_log = ui["state"] / "logs" / "prefect-ui.log"
    assert server_log.stat().st_size > 0
    assert tracebacks(server_log) == []
