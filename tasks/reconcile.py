"""Crash reconciliation: Prefect flow runs, subflow runs and task runs, MLflow runs and stage
locks left behind by processes of this host that no longer exist (``posttrain doctor`` and
the start of every run).

Each run records its owner (pid + host) in ``<state>/runs`` (``components.runowners``); a file
whose pid is dead names the killed runs. Live processes are never touched.
"""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed

from components.doctor import Report, fail_mlflow_runs, remove_locks, stale_locks
from components.runowners import Owner, owners
from components.settings import get_settings
from tasks.common import tracker

_OPEN = [StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED, StateType.CANCELLING, StateType.PAUSED]


def _open_flow_runs(client, ids: list[str]) -> list:
    """The flow runs ``ids`` and their subflow runs that are not in a final state."""
    state = FlowRunFilterState(type=FlowRunFilterStateType(any_=_OPEN))
    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids), state=state))
    subs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=ids), state=state))
    return list({str(r.id): r for r in [*runs, *subs]}.values())


def crash_prefect_runs(owner: Owner, report: Report, repair: bool) -> None:
    """The owner's open flow runs, their subflow runs and their open task runs -> CRASHED."""
    if not owner.flow_runs:
        return
    msg = f"the process {owner.pid} that ran it no longer exists (marked by posttrain doctor)"
    with get_client(sync_client=True) as client:
        flows = _open_flow_runs(client, owner.flow_runs)
        ids = [r.id for r in flows] + [i for i in owner.flow_runs]
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
            task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=_OPEN))))
        for t in tasks:
            report.findings.append(f"Prefect task run {t.name} {t.state_type.value} -> CRASHED")
            if repair:
                client.set_task_run_state(t.id, Crashed(message=msg), force=True)
        for f in flows:
            report.findings.append(f"Prefect flow run {f.name} ({f.id}) {f.state_type.value} -> CRASHED")
            if repair:
                client.set_flow_run_state(f.id, Crashed(message=msg), force=True)


def reconcile(repair: bool = True) -> Report:
    """Find (and with ``repair`` fix) what dead processes of this host left behind."""
    s = get_settings()
    report = Report(repaired=repair)
    trk = None
    for owner in owners(s.state_path):
        if not owner.local:
            report.skipped.append(f"runs of {owner.host} pid {owner.pid}: another machine, not checked here")
            continue
        if not owner.dead:
            continue
        crash_prefect_runs(owner, report, repair)
        trk = trk or tracker()
        fail_mlflow_runs(trk, owner, report, repair)
        if not owner.flow_runs and not owner.mlflow_runs:
            continue
        report.findings.append(f"owner record {owner.path.name} of dead process {owner.pid} -> removed")
        if repair:
            owner.path.unlink(missing_ok=True)
    remove_locks(stale_locks(s.lock_dir), report, repair)
    return report
