"""Promise: registration is idempotent. A run killed right after the registry got its model
version, started again, reuses that version (one version per model digest and lineage), and the
killed run is no longer RUNNING in Prefect or MLflow."""

from __future__ import annotations

from user_cli import flow_run_states, kill_group, mlflow_db, posttrain, query, start, wait_until

ARGS = ["run", "--recipe", "smoke"]


def _versions(state) -> list[tuple]:
    return query(mlflow_db(state), "select version from model_versions")


def test_registering_again_after_a_kill_reuses_the_version(tmp_path):
    state = tmp_path / "state"
    proc = start(ARGS, state)
    assert wait_until(lambda: len(_versions(state)) >= 1, proc, every=0.01)
    assert proc.poll() is None, "the run ended before it could be killed after registering"
    kill_group(proc)
    assert len(_versions(state)) == 1
    assert "RUNNING" in flow_run_states(state).values()

    again = posttrain([*ARGS, "--summary", str(tmp_path / "s.json")], state)
    assert again.returncode == 0, again.stderr[-3000:]
    per_digest = query(mlflow_db(state), "select value, count(*) from model_version_tags "
                                         "where key = 'model_sha256' group by value")
    assert len(per_digest) == 1 and per_digest[0][1] == 1, per_digest
    assert len(_versions(state)) == 1
    assert "RUNNING" not in flow_run_states(state).values(), flow_run_states(state)
    assert "CRASHED" in flow_run_states(state).values()
    assert query(mlflow_db(state), "select count(*) from runs where status = 'RUNNING'") == [(0,)]
