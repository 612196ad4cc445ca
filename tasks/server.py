"""Reach the Prefect API before a run starts, one process of a state folder at a time.

Two processes that each start Prefect's ephemeral server on one fresh sqlite database both run
its migrations and one fails ("table block_type already exists"). Starting the server under a
file lock in the state folder lets the first one migrate; the second then finds the tables.
The server stays up for the rest of the process (Prefect keeps one per process).
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from prefect.client.orchestration import get_client


def ensure_prefect_api(lock_dir: Path) -> None:
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / "prefect-db.flock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            with get_client(sync_client=True) as client:
                client.api_healthcheck()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
