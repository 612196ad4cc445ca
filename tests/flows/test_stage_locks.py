"""The stage lock manager: mutual exclusion across processes, and no wait on a dead holder's lock."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from tasks.common import STAGE_CACHE_POLICY, stage_task, task_key
from tasks.locks import StateLockManager

HOLD_S = 1.0
HOLDER_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from tasks.locks import StateLockManager
    m = StateLockManager(Path(sys.argv[1]))
    holder = f"proc-{sys.argv[2]}"
    assert m.acquire_lock("stage-key", holder)
    t0 = time.time()
    time.sleep(float(sys.argv[3]))
    t1 = time.time()
    m.release_lock("stage-key", holder)
    print(json.dumps([t0, t1]))
""")


def test_two_processes_never_hold_the_same_lock_at_once(tmp_path):
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(tmp_path), str(i), str(HOLD_S)],
                              cwd=root, stdout=subprocess.PIPE, text=True) for i in range(2)]
    spans = sorted(json.loads(p.communicate(timeout=120)[0]) for p in procs)
    assert all(p.returncode == 0 for p in procs)
    (s0, e0), (s1, e1) = spans
    assert e0 - s0 >= HOLD_S and e1 - s1 >= HOLD_S
    assert s1 >= e0  # the second holder started only after the first released
    assert list(tmp_path.glob("*.lock")) == []


def _holding_process(lock_dir: Path, key: str) -> subprocess.Popen:
    """A process that takes the lock through Prefect's API (a random holder id) and sleeps."""
    script = ("import sys, time, uuid; from pathlib import Path; from tasks.locks import StateLockManager; "
              "assert StateLockManager(Path(sys.argv[1])).acquire_lock(sys.argv[2], str(uuid.uuid4())); "
              "print('held', flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", script, str(lock_dir), key], cwd=Path(__file__).resolve().parents[2],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_killed_holder_lock_is_broken_a_live_one_is_kept(tmp_path):
    killed, live = _holding_process(tmp_path, "a"), _holding_process(tmp_path, "b")
    killed.kill()
    killed.wait()  # reaped: its pid names no process now
    try:
        m = StateLockManager(tmp_path)
        info = json.loads((tmp_path / "b.lock").read_text())
        assert info["pid"] == live.pid and info["host"] == socket.gethostname()
        assert (tmp_path / "a.lock").exists()  # the killed holder's file is still there ...
        assert m.acquire_lock("a", "me", acquire_timeout=5)  # ... but its dead holder does not block
        assert m.is_lock_holder("a", "me")
        assert m.wait_for_lock("b", timeout=0.3) is False  # a live holder does
        # Another machine's process cannot be checked from here: its lock is kept.
        remote = tmp_path / "c.lock"
        remote.write_text(json.dumps({"holder": "x", "expiration": None, "host": "another-host", "pid": killed.pid}))
        assert m.is_locked("c") and remote.exists()
    finally:
        live.kill()
        live.wait()
    assert not m.is_locked("b") and not (tmp_path / "b.lock").exists()  # its holder died: broken now


def test_a_lock_file_being_written_counts_as_locked(tmp_path):
    (tmp_path / "k.lock").touch()  # acquire_lock creates the file, then writes the holder
    assert StateLockManager(tmp_path).is_locked("k")


def test_stage_tasks_share_the_serializable_policy_and_take_tags():
    @stage_task("t", key=lambda cfg, upstream: f"{cfg}-{upstream}", tags=("gpu",))
    def t(run_id: str, cfg: str, upstream: str, note: str = "") -> str:
        return cfg

    assert t.tags == {"gpu"}
    assert t.cache_policy is STAGE_CACHE_POLICY
    assert str(STAGE_CACHE_POLICY.isolation_level.value) == "SERIALIZABLE"
    assert isinstance(STAGE_CACHE_POLICY.lock_manager, StateLockManager)
    assert type(t.with_options(refresh_cache=True)) is type(t)
    # The task derives its key from the inputs its key function names; run_id and note never enter it.
    assert task_key(t, {"run_id": "r1", "cfg": "a", "upstream": "b", "note": "x"}) == "a-b"
    assert task_key(t.with_options(refresh_cache=True), {"run_id": "r2", "cfg": "a", "upstream": "b"}) == "a-b"
