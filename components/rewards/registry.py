"""The reward registry: names to classes, and :func:`get_reward` to build one from a spec.

Each reward family module registers its classes with :func:`register`; importing
``components.rewards`` imports every family, so the registry is whole wherever it is used.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from components.rewards.base import RewardFn

REWARDS: dict[str, type[RewardFn]] = {}

R = TypeVar("R", bound=type[RewardFn])


def register(cls: R) -> R:
    """Class decorator: make ``cls`` reachable as ``get_reward(cls.name)``."""
    if cls.name in REWARDS and REWARDS[cls.name] is not cls:
        raise ValueError(f"reward {cls.name!r} registered twice")
    REWARDS[cls.name] = cls
    return cls


def get_reward(spec: str | dict[str, Any]) -> RewardFn:
    """Build a reward from ``"numeric"`` or ``{"name": "numeric", "rel_tol": 1e-4}``.

    A string that starts with ``{`` is read as that object in JSON: a row's or a source's ``task``
    is a string, so a reward with options (``judge``'s model and rubric) is named there as
    ``'{"name": "judge", "model": "qwen", "rubric": "..."}'``.
    Unknown names and unknown options raise ``ValueError`` naming the allowed values.
    """
    if isinstance(spec, str) and spec.lstrip().startswith("{"):
        text = spec
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"reward spec {text[:80]!r} is not valid JSON: {exc}") from None
        if not isinstance(spec, dict):
            raise ValueError("a JSON reward spec must be an object")
    if isinstance(spec, str):
        name, options = spec, {}
    else:
        options = dict(spec)
        name = options.pop("name", None)
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; allowed: {sorted(REWARDS)}")
    options.pop("version", None)  # present in specs written by RewardFn.spec()
    return REWARDS[name](REWARDS[name].Config(**options))
