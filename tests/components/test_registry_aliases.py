"""Registry aliases through promote and rollback, on a real sqlite MLflow store."""

import pytest

from components.settings import Settings
from components.stages.deploy import promote, rollback
from components.tracking import Tracker


@pytest.fixture
def trk(tmp_path):
    return Tracker(Settings(state_dir=tmp_path))


def _alias(trk, alias):
    mv = trk.version_by_alias("m", alias)
    return None if mv is None else str(mv.version)


def test_promote_and_rollback_move_aliases(trk, tmp_path):
    run = trk.start_run("deploy")
    versions = [trk.register_model("m", str(tmp_path / f"v{i}"), run, {"i": i, "s3_secret_key": "x"}) for i in (1, 2, 3)]
    assert versions == ["1", "2", "3"]
    assert "s3_secret_key" not in trk.model_version("m", "1").tags  # secrets never reach the registry
    assert promote(trk, "m", "1") == {"champion": "1", "previous": None}
    assert (_alias(trk, "champion"), _alias(trk, "previous")) == ("1", None)
    promote(trk, "m", "2")
    assert (_alias(trk, "champion"), _alias(trk, "previous")) == ("2", "1")
    promote(trk, "m", "3")
    assert (_alias(trk, "champion"), _alias(trk, "previous")) == ("3", "2")
    assert rollback(trk, "m") == {"champion": "2", "previous": "3"}
    assert (_alias(trk, "champion"), _alias(trk, "previous")) == ("2", "3")
    promote(trk, "m", "2")  # promoting the champion again changes nothing
    assert (_alias(trk, "champion"), _alias(trk, "previous")) == ("2", "3")


def test_rollback_without_previous_is_an_error(trk, tmp_path):
    run = trk.start_run("deploy")
    v = trk.register_model("m", str(tmp_path), run, {})
    promote(trk, "m", v)
    with pytest.raises(ValueError, match="no 'previous'"):
        rollback(trk, "m")
