"""Deterministic synthetic sources: arithmetic and countdown prompts with exact answers.

Both use `random.Random(seed)` only, so a config always yields the same rows on any machine.
They resample (up to a bound) to avoid repeating a prompt, so most prompts are distinct even
when the problem space is small; remaining repeats are removed later by exact dedup.
"""

from __future__ import annotations

import math
import random
from typing import Any

from components.data.config import ArithmeticSource, CountdownSource, as_range

_MAX_RETRIES = 100  # attempts to find an unseen prompt before accepting a repeat


def _operand(rng: random.Random, dlo: int, dhi: int) -> int:
    k = rng.randint(dlo, dhi)
    return rng.randint(1 if k == 1 else 10 ** (k - 1), 10**k - 1)


def _divisors_in(value: int, lo: int, hi: int) -> list[int]:
    """Divisors of `value` (> 0) within [lo, hi]."""
    hi = min(hi, value)
    if hi < lo:
        return []
    if hi - lo <= 20_000:
        return [d for d in range(lo, hi + 1) if value % d == 0]
    small = [d for d in range(1, math.isqrt(value) + 1) if value % d == 0]
    found = set(small) | {value // d for d in small}
    return sorted(d for d in found if lo <= d <= hi)


def _divisor(rng: random.Random, value: int, dlo: int, dhi: int) -> int | None:
    """A divisor with dlo..dhi digits, preferring non-trivial ones (not 1, not value itself)."""
    lo = 1 if dlo == 1 else 10 ** (dlo - 1)
    cands = _divisors_in(value, lo, 10**dhi - 1)
    nontrivial = [d for d in cands if d not in (1, value)]
    pick = nontrivial or cands
    return rng.choice(pick) if pick else None


def arithmetic_expression(rng: random.Random, cfg: ArithmeticSource) -> tuple[str, int]:
    """One expression and its integer value under normal precedence; `/` is always exact."""
    dlo, dhi = as_range(cfg.digits)
    olo, ohi = as_range(cfg.num_ops)
    while True:
        num_ops = rng.randint(olo, ohi)
        term = _operand(rng, dlo, dhi)  # current product/quotient term (always > 0)
        total, sign, parts, ok = 0, 1, [str(term)], True
        for _ in range(num_ops):
            op = rng.choice(cfg.operators)
            if op == "/":
                x = _divisor(rng, term, dlo, dhi)
                if x is None:
                    ok = False
                    break
                term //= x
            elif op == "*":
                x = _operand(rng, dlo, dhi)
                term *= x
            else:
                total += sign * term
                sign = 1 if op == "+" else -1
                x = term = _operand(rng, dlo, dhi)
            parts += [op, str(x)]
        value = total + sign * term
        if ok and (cfg.allow_negative or value >= 0):
            return " ".join(parts), value


def generate_arithmetic(cfg: ArithmeticSource) -> list[dict[str, Any]]:
    """`cfg.n` raw rows: prompt from the template, integer answer, meta {"expr": ...}."""
    rng = random.Random(cfg.seed)
    seen: set[str] = set()
    rows = []
    for _ in range(cfg.n):
        for _attempt in range(_MAX_RETRIES):
            expr, value = arithmetic_expression(rng, cfg)
            if expr not in seen:
                break
        seen.add(expr)
        rows.append(
            {"prompt": cfg.template.format(expr=expr), "answer": str(value), "system": None,
             "task": cfg.task, "meta": {"expr": expr}}
        )
    return rows


def countdown_instance(rng: random.Random, cfg: CountdownSource) -> tuple[list[int], int, str]:
    """Numbers, a target in range reachable with every number once, and one solution."""
    lo, hi = cfg.target_range
    for _ in range(2000):
        numbers = [rng.randint(1, cfg.max_number) for _ in range(cfg.num_numbers)]
        for _ in range(20):
            pool = [(v, str(v)) for v in numbers]
            while len(pool) > 1:
                i, j = rng.sample(range(len(pool)), 2)
                (a, ea), (b, eb) = sorted((pool[i], pool[j]), key=lambda p: -p[0])
                ops = ["+", "*"] + (["-"] if a > b else []) + (["/"] if b > 1 and a % b == 0 else [])
                op = rng.choice(ops)
                value = {"+": a + b, "*": a * b, "-": a - b, "/": a // b if b else 0}[op]
                pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(value, f"({ea} {op} {eb})")]
            value, expr = pool[0]
            if lo <= value <= hi:
                return numbers, value, expr[1:-1]
    raise ValueError(f"countdown: no target in {list(cfg.target_range)} reachable with these settings")


def generate_countdown(cfg: CountdownSource) -> list[dict[str, Any]]:
    """`cfg.n` raw rows; answer is the target, meta carries numbers, target and one solution."""
    rng = random.Random(cfg.seed)
    seen: set[tuple[tuple[int, ...], int]] = set()
    rows = []
    for _ in range(cfg.n):
        for _attempt in range(_MAX_RETRIES):
            numbers, target, solution = countdown_instance(rng, cfg)
            key = (tuple(sorted(numbers)), target)
            if key not in seen:
                break
        seen.add(key)
        prompt = cfg.template.format(numbers="[" + ", ".join(map(str, numbers)) + "]", target=target)
        rows.append(
            {"prompt": prompt, "answer": str(target), "system": None, "task": cfg.task,
             "meta": {"numbers": numbers, "target": target, "solution": solution}}
        )
    return rows
