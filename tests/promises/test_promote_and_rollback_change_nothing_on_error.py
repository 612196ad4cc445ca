"""Promise: ``posttrain promote N`` checks N before moving anything; alias moves that fail part way
are undone, so champion/previous stay as they were; ``rollback`` without a distinct previous
version says so and changes nothing. They (and ``serve``) default to the model the last run registered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from user_cli import posttrain

from components.settings import Settings
from components.stages.deploy import promote
from components.tracking import Tracker

MODEL = "promise-policy"


def _aliases(trk: Tracker) -> dict:
    got = {a: trk.version_by_alias(MODEL, a) for a in ("champion", "previous")}
    return {a: (str(v.version) if v is not None else None) for a, v in got.items()}


def _registry(state: Path, n: int) -> Tracker:
    """``n`` versions of MODEL in the state folder's registry, as deploy registers them."""
    trk = Tracker(Settings(state_dir=state))
    for i in range(n):
        (state / f"m{i}").mkdir(parents=True)
        run = trk.start_run(f"deploy-{i}")
        v = trk.register_model(MODEL, str(state / f"m{i}"), run, {"model_sha256": f"{i:064d}"})
        trk.end_run(run)
        promote(trk, MODEL, v)
    return trk


def test_promote_unknown_version_and_rollback_without_previous_change_nothing(tmp_path):
    state = tmp_path / "state"
    trk = _registry(state, 1)
    before = _aliases(trk)
    assert before == {"champion": "1", "previous": None}

    r = posttrain(["promote", "9"], state, timeout=300)  # no --model: the last registered model
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "no version '9'" in r.stderr and MODEL in r.stderr
    assert _aliases(trk) == before

    r = posttrain(["rollback"], state, timeout=300)
    assert r.returncode == 2 and "nothing to roll back to" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert _aliases(trk) == before

    r = posttrain(["serve", "--alias", "staging"], state, timeout=300)  # serve too: the last model by default
    assert r.returncode == 1 and r.stderr.strip() == f"model {MODEL} has no version with alias 'staging' whose weights are reachable", r.stderr

    _registry_more = trk.register_model(MODEL, str(tmp_path), trk.start_run("deploy-x"), {"model_sha256": "x"})
    r = posttrain(["promote", _registry_more, "--model", MODEL], state, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"champion": _registry_more, "previous": "1"}
    assert _aliases(trk) == {"champion": _registry_more, "previous": "1"}
    r = posttrain(["rollback"], state, timeout=300)
    assert r.returncode == 0, r.stderr
    assert _aliases(trk) == {"champion": "1", "previous": _registry_more}


class _FailingOn(Tracker):
    """A real tracker whose n-th alias move fails (the registry going away half way)."""

    def __init__(self, settings: Settings, fail_at: int) -> None:
        super().__init__(settings)
        self.moves, self.fail_at = 0, fail_at

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.moves += 1
        if self.moves == self.fail_at:
            raise MlflowException(f"registry unavailable while setting {alias}")
        super().set_alias(name, alias, version)


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_failed_alias_move_leaves_champion_and_previous_as_they_were(tmp_path, fail_at):
    state = tmp_path / "state"
    trk = _registry(state, 3)
    promote(trk, MODEL, "2")  # champion 2, previous 3
    before = _aliases(trk)
    assert before == {"champion": "2", "previous": "3"}
    failing = _FailingOn(Settings(state_dir=state), fail_at)
    with pytest.raises(MlflowException):
        promote(failing, MODEL, "1")
    assert failing.moves > fail_at - 1
    assert _aliases(trk) == before
