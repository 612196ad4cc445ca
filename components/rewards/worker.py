"""A hard time limit for reward code that can hang (sympy on hostile input): persistent child processes.

:func:`signal.alarm` timeouts (what math-verify uses) work only on the main thread; a reward also
runs in Prefect worker threads and thread pools. Here each call is sent to a long-lived child
process started with the ``forkserver`` context (``spawn`` where that is missing; never ``fork``, which
would copy the trainer's threads and memory); the caller waits on a pipe with a deadline and, when
the deadline passes, kills the child (SIGKILL) and a fresh one is started for the next call. The
child also runs under an address-space limit, so a call that tries to build a huge number fails
with ``MemoryError`` instead of swapping the machine.

A :class:`WorkerPool` holds up to ``size`` children and lends one per call, so calls from several
threads run in parallel and never share a child. :func:`shared_pool` keeps one pool per
(target, size, memory) for the whole process; the children exit with it.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import queue
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any, Callable


class WorkerTimeout(Exception):
    """The call passed its deadline; its child was killed."""


class WorkerError(Exception):
    """The child could not start, died, or the call raised there (the message says which)."""


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _child_main(conn_in: Connection, conn: Connection, target: str, memory_mb: int) -> None:
    """Child loop: limit memory, import the target, say "ready", then answer calls until EOF."""
    try:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # not on this platform or not allowed: run unlimited
        pass
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled": we are the timeout
    fn = _resolve(target)
    conn.send(("ready", None))
    while True:
        try:
            args = conn_in.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - report, keep serving (MemoryError included)
            conn.send(("error", f"{type(exc).__name__}: {str(exc)[:200]}"))


_CHILD_CODE = (
    "import sys; from multiprocessing.connection import Connection as C; "
    "from components.rewards.worker import _child_main as m; "
    "m(C(int(sys.argv[1]), writable=False), C(int(sys.argv[2]), readable=False), sys.argv[3], int(sys.argv[4]))"
)


class _Child:
    def __init__(self, target: str, memory_mb: int, start_timeout_s: float) -> None:
        parent_r, child_w = os.pipe()
        child_r, parent_w = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        cmd = [sys.executable, "-c", _CHILD_CODE, str(child_r), str(child_w), target, str(memory_mb)]
        self.proc = subprocess.Popen(cmd, pass_fds=(child_r, child_w), env=env, stdin=subprocess.DEVNULL)
        os.close(child_r)
        os.close(child_w)
        self.conn = Connection(parent_r, writable=False)
        self.out = Connection(parent_w, readable=False)
        if not self.conn.poll(start_timeout_s):
            self.kill()
            raise WorkerError(f"worker for {target} did not start within {start_timeout_s:g} s")
        try:
            self.conn.recv()
        except (EOFError, OSError) as exc:
            self.kill()
            raise WorkerError(f"worker for {target} died at start") from exc

    def call(self, args: tuple, timeout_s: float) -> Any:
        self.out.send(args)
        if not self.conn.poll(timeout_s):
            raise WorkerTimeout(f"no answer within {timeout_s:g} s")
        kind, value = self.conn.recv()
        if kind == "error":
            raise WorkerError(value)
        return value

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self.conn.close()
        self.out.close()


class WorkerPool:
    """Up to ``size`` persistent children running ``target`` (``"module:function"``); thread-safe."""

    def __init__(self, target: str, size: int = 1, memory_mb: int = 2048, start_timeout_s: float = 120.0) -> None:
        self.target, self.size, self.memory_mb, self.start_timeout_s = target, size, memory_mb, start_timeout_s
        self._idle: queue.Queue[_Child] = queue.Queue()
        self._lock = threading.Lock()
        self._count = 0  # children alive (idle or lent)
        self.kills = 0  # children killed on a deadline (a figure for tests and metrics)

    def _acquire(self) -> _Child:
        with self._lock:
            start_new = self._idle.empty() and self._count < self.size
            if start_new:
                self._count += 1
        if not start_new:
            try:
                return self._idle.get(timeout=self.start_timeout_s)
            except queue.Empty as exc:
                raise WorkerError("no worker free") from exc
        try:
            return _Child(self.target, self.memory_mb, self.start_timeout_s)
        except BaseException:
            with self._lock:
                self._count -= 1
            raise

    def _discard(self, child: _Child) -> None:
        child.kill()
        with self._lock:
            self._count -= 1

    def call(self, *args: Any, timeout_s: float) -> Any:
        """``target(*args)`` in a child; :class:`WorkerTimeout` after ``timeout_s`` (child killed)."""
        child = self._acquire()
        try:
            result = child.call(args, timeout_s)
        except WorkerTimeout:
            self.kills += 1
            self._discard(child)
            raise
        except (EOFError, OSError) as exc:
            self._discard(child)
            raise WorkerError("worker died") from exc
        except BaseException:
            self._idle.put(child)  # the call raised in the child: the child itself is fine
            raise
        self._idle.put(child)
        return result

    def close(self) -> None:
        while True:
            try:
                self._discard(self._idle.get_nowait())
            except queue.Empty:
                return


_POOLS: dict[tuple[str, int, int], WorkerPool] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(target: str, size: int = 1, memory_mb: int = 2048) -> WorkerPool:
    """The process-wide pool for these settings (created on first use, closed at exit)."""
    key = (target, size, memory_mb)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = WorkerPool(target, size, memory_mb)
        return pool


@atexit.register
def _close_pools() -> None:
    for pool in list(_POOLS.values()):
        pool.close()

