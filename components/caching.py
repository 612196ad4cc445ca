"""Stage cache keys, as DESIGN.md states them.

key = sha256(stage name + canonical JSON of the stage config + upstream digests
             + the stage's code version + the global cache_version)

No run id enters the key, so keys carry across flow runs and processes. The code
version hashes the source files of the component modules a stage uses, so editing a
stage's logic invalidates exactly that stage (and, through digests, what follows).
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

from components.recipe import canonical_json


@lru_cache(maxsize=None)
def _module_files(module: str) -> tuple[Path, ...]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"cannot locate module {module}")
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package: hash every .py below it
        root = origin.parent
        return tuple(sorted(root.rglob("*.py")))
    return (origin,)


def code_version(modules: tuple[str, ...] | list[str]) -> str:
    h = hashlib.sha256()
    for m in sorted(modules):
        for f in _module_files(m):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def stage_key(
    stage: str,
    config: dict,
    upstream: dict[str, str],
    modules: tuple[str, ...] | list[str],
    cache_version: str,
) -> str:
    payload = {
        "stage": stage,
        "config": config,
        "upstream": dict(sorted(upstream.items())),
        "code": code_version(modules),
        "cache_version": cache_version,
    }
    return f"{stage}-{hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:32]}"
