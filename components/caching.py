"""Stage cache keys, as DESIGN.md states them.

key = sha256(stage name + canonical JSON of the stage config + upstream digests
             + the stage's code version + the global cache_version)

No run id enters the key, so keys carry across flow runs and processes. The code version is
derived, never kept by hand: it hashes the source of every module in ``components/`` and
``kernels/`` that the stage module reaches through its imports (all ``import`` statements,
those inside functions too, read with ``ast``; the packages above each module count, since
importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py``). Editing any module a
stage really uses, directly or through another module, invalidates that stage (and, through
digests, what follows); editing a module it never reaches does not.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

from components.recipe import canonical_json

# Top-level packages whose source enters code versions (third-party code is pinned by the lock).
CODE_ROOTS = ("components", "kernels")


@lru_cache(maxsize=None)
def _package_dir(top: str) -> Path | None:
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def module_file(module: str) -> Path | None:
    """Source file of ``module`` when it lives in one of CODE_ROOTS, else None."""
    top, _, rest = module.partition(".")
    root = _package_dir(top) if top in CODE_ROOTS else None
    if root is None:
        return None
    base = root.joinpath(*rest.split(".")) if rest else root
    for f in (base / "__init__.py", base.with_suffix(".py")):
        if f.is_file():
            return f
    return None


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_modules(path: Path, module: str) -> set[str]:
    """Every module name ``path`` (the source of ``module``) imports, absolute, resolved."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            # `from pkg import name`: name may be a submodule or an attribute; keep it if a file.
            found.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
    return {m for m in found if m and module_file(m) is not None}


@lru_cache(maxsize=None)
def module_closure(module: str) -> tuple[tuple[str, Path], ...]:
    """(module, file) for ``module`` and everything it reaches within CODE_ROOTS, sorted."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        f = module_file(m)
        if f is None:
            raise ImportError(f"cannot locate module {m} under {CODE_ROOTS}")
        seen[m] = f
        todo.extend(p for p in _parents(m) if p not in seen)
        todo.extend(i for i in imported_modules(f, m) if i not in seen)
    return tuple(sorted(seen.items()))


def code_version(modules: str | tuple[str, ...] | list[str]) -> str:
    """Hash of the source of every module the given stage module(s) reach (see module doc)."""
    return _code_version((modules,) if isinstance(modules, str) else tuple(sorted(modules)))


@lru_cache(maxsize=None)
def _code_version(roots: tuple[str, ...]) -> str:
    files: dict[str, Path] = {}
    for r in roots:
        files.update(module_closure(r))
    h = hashlib.sha256()
    for name, f in sorted(files.items()):
        h.update(name.encode())
        h.update(b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def stage_key(
    stage: str,
    config: dict,
    upstream: dict[str, str],
    modules: str | tuple[str, ...] | list[str],
    cache_version: str,
) -> str:
    """``modules``: the stage module's name (its code version is derived from its imports)."""
    payload = {
        "stage": stage,
        "config": config,
        "upstream": dict(sorted(upstream.items())),
        "code": code_version(modules),
        "cache_version": cache_version,
    }
    return f"{stage}-{hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:32]}"
