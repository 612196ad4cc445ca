"""Promise: the ephemeral Prefect server posttrain starts writes to ``<state>/logs/prefect-server.log``,
never to the user's terminal (on sqlite it logs a traceback for every write that met another
writer); a server that cannot start fails the run in one line that names that log."""

from __future__ import annotations

from user_cli import posttrain

CURATE = ["run", "--recipe", "smoke", "--stages", "curate"]


def test_prefect_server_output_goes_to_its_log(tmp_path):
    state = tmp_path / "state"
    ok = posttrain(CURATE, state)  # user_cli points at no server: posttrain starts its own
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "ephemeral, started for this run" in ok.stderr
    assert (state / "logs" / "prefect-server.log").is_file()
    assert "Traceback" not in ok.stdout + ok.stderr

    broken = tmp_path / "broken"
    db = f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/prefect.db"  # a folder that does not exist
    bad = posttrain(CURATE, broken, PREFECT_API_DATABASE_CONNECTION_URL=db)
    log = broken / "logs" / "prefect-server.log"
    assert bad.returncode == 1, bad.stderr[-3000:]
    assert "Traceback" not in bad.stdout + bad.stderr, bad.stderr[-3000:]
    failure = [line for line in bad.stderr.splitlines() if line.startswith("run failed")]
    assert len(failure) == 1 and "Prefect server exited" in failure[0] and str(log) in failure[0], bad.stderr
    text = log.read_text()
    assert "Traceback" in text and "unable to open database file" in text
