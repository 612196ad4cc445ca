"""Promise: the CLI works from any working directory, even one holding a file named like a
standard-library module (Prefect's ephemeral server must not import the user's ``inspect.py``)."""

from __future__ import annotations

import json

from user_cli import posttrain


def test_cli_works_from_a_directory_with_inspect_py(tmp_path):
    work = tmp_path / "my-project"
    work.mkdir()
    (work / "inspect.py").write_text("# the user's own script, nothing to do with the stdlib module\nVALUE = 1\n")
    r = posttrain(["run", "--recipe", "smoke", "--stages", "curate", "--summary", "s.json"],
                  tmp_path / "state", cwd=work, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((work / "s.json").read_text())["stages"]["curate"]["outputs"]["dataset"]["sha256"]
