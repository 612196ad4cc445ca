"""Crash reconciliation without Prefect: MLflow runs and stage locks of dead processes.

``tasks.reconcile`` adds the Prefect flow and task runs and is what ``posttrain doctor`` and the
start of every run call. Only processes of this host that no longer exist are considered, so a
live run (its pid answers) is never touched.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

from components.runowners import Owner, pid_alive


@dataclass
class Report:
    findings: list[str] = field(default_factory=list)
    repaired: bool = False
    skipped: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        if not self.findings:
            return ["nothing to repair: no run of a dead process is left RUNNING, no stale lock", *self.skipped]
        verb = "repaired" if self.repaired else "found"
        return [f"{verb}: {f}" for f in self.findings] + self.skipped


def stale_locks(lock_dir: Path) -> list[Path]:
    """Prefect stage-lock files (``tasks.locks``) whose holder process of this host is gone."""
    out = []
    for p in sorted(Path(lock_dir).glob("*.lock")):
        try:
            info = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        pid = info.get("pid")
        if info.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
            out.append(p)
    return out


def remove_locks(paths: list[Path], report: Report, repair: bool) -> None:
    for p in paths:
        report.findings.append(f"stale lock {p.name} (holder process gone)")
        if repair:
            p.unlink(missing_ok=True)


def fail_mlflow_runs(tracker, owner: Owner, report: Report, repair: bool) -> None:
    """The owner's MLflow runs and their child runs still RUNNING -> FAILED."""
    for run_id in owner.mlflow_runs:
        try:
            runs = [tracker.get_run(run_id), *tracker.child_runs(run_id)]
        except Exception:  # noqa: BLE001 - a run id the store no longer has
            continue
        for r in runs:
            if r.info.status == "RUNNING":
                report.findings.append(f"MLflow run {r.info.run_id} ({r.info.run_name}) RUNNING, "
                                       f"its process {owner.pid} is gone -> FAILED")
                if repair:
                    tracker.set_tags(r.info.run_id, {"posttrain.crashed": "process gone; marked by doctor"})
                    tracker.end_run(r.info.run_id, "FAILED")
