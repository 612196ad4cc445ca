"""Seeded ordering, per-source caps and weighted mixing.

Every random choice here is a function of (seed, salt, row id) through sha256, so it does not
depend on input order, process, or platform.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

Row = dict[str, Any]


def unit_hash(seed: int, salt: str, row_id: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, salt, id)."""
    digest = hashlib.sha256(f"{seed}:{salt}:{row_id}".encode()).hexdigest()
    return int(digest[:15], 16) / float(16**15)


def seeded_order(rows: Sequence[Row], seed: int, salt: str = "order") -> list[Row]:
    """Rows in a pseudo-random order fixed by the seed (ties, i.e. equal ids, keep input order)."""
    return sorted(rows, key=lambda r: unit_hash(seed, salt, r["id"]))


def quotas(available: dict[str, int], weights: dict[str, float], total: int) -> dict[str, int]:
    """Rows to take from each source so that the mix follows `weights` as closely as the
    available rows allow: a source that cannot fill its share gives the rest to the others
    (water-filling); fractional shares are rounded by largest remainder, ties by source order."""
    take = {name: 0 for name in available}
    active = [n for n in available if available[n] > 0]
    remaining = min(total, sum(available.values()))
    while active and remaining > 0:
        wsum = sum(weights[n] for n in active)
        share = {n: remaining * weights[n] / wsum for n in active}
        short = [n for n in active if share[n] >= available[n] - take[n]]
        if short:  # these sources are exhausted; fix them and share the rest again
            for n in short:
                remaining -= available[n] - take[n]
                take[n] = available[n]
            active = [n for n in active if n not in short]
            continue
        floors = {n: int(share[n]) for n in active}
        left = remaining - sum(floors.values())
        order = sorted(active, key=lambda n: (-(share[n] - floors[n]), list(available).index(n)))
        for n in active:
            take[n] += floors[n]
        for n in order[:left]:
            take[n] += 1
        break
    return take


def cap_and_mix(
    rows: Sequence[Row], *, max_rows: dict[str, int | None], weights: dict[str, float],
    total_rows: int | None, seed: int,
) -> tuple[list[Row], list[Row]]:
    """(kept in seeded order across sources, removed). Per-source `max_rows` first, then, if
    `total_rows` is set, weighted proportional sampling down to `total_rows`."""
    by_source: dict[str, list[Row]] = {name: [] for name in max_rows}
    for row in seeded_order(rows, seed):
        by_source.setdefault(row["source"], []).append(row)
    kept: dict[str, list[Row]] = {}
    removed: list[Row] = []
    for name, group in by_source.items():
        cap = max_rows.get(name)
        kept[name] = group if cap is None else group[:cap]
        removed += group[len(kept[name]):]
    if total_rows is not None:
        take = quotas({n: len(g) for n, g in kept.items()}, {n: weights.get(n, 1.0) for n in kept}, total_rows)
        for name in kept:
            removed += kept[name][take[name]:]
            kept[name] = kept[name][: take[name]]
    out = seeded_order([r for g in kept.values() for r in g], seed)
    return out, removed
