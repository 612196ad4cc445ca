"""Stage locks: the file lock manager that keeps two runs on one machine from computing a stage twice."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from prefect.locking.filesystem import FileSystemLockManager

from components.runowners import pid_alive as _pid_alive
from components.settings import get_settings


class StateLockManager(FileSystemLockManager):
    """Prefect's file lock manager, in ``<state>/locks``, that breaks the locks of dead processes.

    Prefect's file locks never expire by themselves, so a run killed inside a stage would leave
    every later run waiting forever on that stage. Each lock file here also names the host and
    pid that took it; a lock of this host whose process no longer exists is removed. The folder
    follows the current settings, so a test that switches state folders gets its own.
    Locks are per machine: several machines sharing one S3 cache need a shared lock service
    (e.g. ``prefect-redis``'s ``RedisLockManager``) in its place.
    """

    def __init__(self, lock_files_directory: Path | None = None) -> None:
        self._directory = lock_files_directory
        self._locks = {}

    @property
    def lock_files_directory(self) -> Path:  # type: ignore[override]
        return (self._directory or get_settings().lock_dir).expanduser().resolve()

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        ok = super().acquire_lock(key, holder, acquire_timeout, hold_timeout)
        if ok:
            self._stamp_owner(key)
        return ok

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        ok = await super().aacquire_lock(key, holder, acquire_timeout, hold_timeout)
        if ok:
            self._stamp_owner(key)
        return ok

    def _stamp_owner(self, key: str) -> None:
        """Add host and pid to the lock file Prefect wrote (atomically: readers see old or new)."""
        path = self._lock_path_for_key(key)
        data = json.loads(path.read_bytes())
        data.update(host=socket.gethostname(), pid=os.getpid())
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def _get_lock_info(self, key: str, use_cache: bool = True):
        try:
            info = super()._get_lock_info(key, use_cache=use_cache)
        except ValueError:  # the file exists but its holder is still writing it: locked
            return {"holder": "", "expiration": None, "path": self._lock_path_for_key(key)}
        if info is not None and self._stale(info):
            self._break(Path(info["path"]), info["holder"])
            self._locks.pop(key, None)
            return None
        return info

    @staticmethod
    def _stale(info: dict) -> bool:
        pid = info.get("pid")
        return (info.get("host") == socket.gethostname() and isinstance(pid, int) and pid != os.getpid()
                and not _pid_alive(pid))

    @staticmethod
    def _break(path: Path, holder: str) -> None:
        """Remove a stale lock file without ever removing a fresh one another waiter just took."""
        aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:  # another waiter broke it first
            return
        try:
            moved_holder = json.loads(aside.read_bytes() or b"{}").get("holder", "")
        except ValueError:
            moved_holder = ""
        if moved_holder != holder:  # we moved a new, live lock: put it back unless replaced
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)
