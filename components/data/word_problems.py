"""A seeded generator of multi-step word problems with integer answers (no downloads).

A problem is a short story: a starting quantity, then ``steps`` events that each change it
(gain, loss, multiply, share equally), then the question. Themes give the wording (several
templates per operation); difficulty knobs are the number of steps and the operand digits.
Multipliers and divisors stay small (2 to 9) so numbers stay readable; a division is only drawn
when it is exact, and a subtraction only when the result stays non-negative, so every
intermediate value is a whole, non-negative count. ``meta`` keeps the theme, the operations and
the expression that computes the answer (a calculator solution), e.g. ``((17 + 25) * 3)``.
Only ``random.Random(seed)`` is used: a config gives the same rows on any machine.
"""

from __future__ import annotations

import random
from typing import Any

from components.data.config import WordProblemSource, as_range

NAMES = ["Ada", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Keiko", "Luis"]

THEMES: dict[str, dict[str, Any]] = {
    "market": {
        "start": ["{name} has {n} apples.", "{name} picks {n} apples in the morning."],
        "+": ["{name} buys {k} more apples.", "A neighbour gives {name} {k} apples."],
        "-": ["{name} sells {k} apples.", "{name} uses {k} apples for a pie."],
        "*": ["A good harvest leaves {name} with {k} times as many apples."],
        "/": ["{name} packs the apples equally into {k} baskets and keeps one basket."],
        "question": "How many apples does {name} have now?",
    },
    "savings": {
        "start": ["{name} has {n} dollars in a piggy bank.", "{name} starts the month with {n} dollars."],
        "+": ["{name} earns {k} dollars walking dogs.", "{name} gets {k} dollars as a gift."],
        "-": ["{name} spends {k} dollars on a book.", "{name} pays {k} dollars for a ticket."],
        "*": ["An investment makes {name}'s money {k} times larger."],
        "/": ["{name} splits the money equally among {k} jars and keeps one jar."],
        "question": "How many dollars does {name} have now?",
    },
    "warehouse": {
        "start": ["A warehouse holds {n} boxes.", "A truck delivers {n} boxes to an empty warehouse."],
        "+": ["Another truck brings {k} boxes.", "Workers find {k} more boxes in the back."],
        "-": ["{k} boxes are shipped to a store.", "{k} boxes are damaged and thrown away."],
        "*": ["The manager orders enough to have {k} times as many boxes."],
        "/": ["The boxes are shared equally among {k} stores; the warehouse keeps one store's share."],
        "question": "How many boxes are in the warehouse now?",
    },
    "library": {
        "start": ["A library owns {n} books.", "{name} counts {n} books on the shelves."],
        "+": ["The library buys {k} new books.", "Readers donate {k} books."],
        "-": ["{k} books are lent out and not returned.", "{k} worn-out books are recycled."],
        "*": ["After a big donation the library has {k} times as many books."],
        "/": ["The books are split equally between {k} branches, and this branch keeps one part."],
        "question": "How many books does the library have now?",
    },
}


def _operand(rng: random.Random, dlo: int, dhi: int) -> int:
    k = rng.randint(dlo, dhi)
    return rng.randint(1 if k == 1 else 10 ** (k - 1), 10**k - 1)


def _step(rng: random.Random, value: int, cfg: WordProblemSource) -> tuple[str, int]:
    """One operation (and its operand) that keeps the value a whole, non-negative count."""
    dlo, dhi = as_range(cfg.digits)
    for _ in range(50):
        op = rng.choice(cfg.operations)
        k = _operand(rng, dlo, dhi) if op in "+-" else rng.randint(2, 9)
        if (op == "-" and k > value) or (op == "/" and value % k):
            continue
        return op, k
    return "+", _operand(rng, dlo, dhi)


def word_problem(rng: random.Random, cfg: WordProblemSource) -> dict[str, Any]:
    """One raw row: story prompt, integer answer, meta with theme, operations and expression."""
    theme_name = rng.choice(cfg.themes)
    theme, name = THEMES[theme_name], rng.choice(NAMES)
    dlo, dhi = as_range(cfg.digits)
    value = _operand(rng, dlo, dhi)
    expr, ops = str(value), []
    lines = [rng.choice(theme["start"]).format(name=name, n=value)]
    for _ in range(rng.randint(*as_range(cfg.steps))):
        op, k = _step(rng, value, cfg)
        value = {"+": value + k, "-": value - k, "*": value * k, "/": value // k}[op]
        expr = f"({expr} {op if op != '/' else '//'} {k})"
        ops.append(op)
        lines.append(rng.choice(theme[op]).format(name=name, k=k))
    lines.append(theme["question"].format(name=name))
    prompt = cfg.template.format(problem=" ".join(lines))
    return {"prompt": prompt, "answer": str(value), "system": None, "task": cfg.task,
            "meta": {"theme": theme_name, "steps": len(ops), "operations": ops, "expression": expr}}


def generate_word_problems(cfg: WordProblemSource) -> list[dict[str, Any]]:
    """``cfg.n`` raw rows, resampling (bounded) to avoid repeated prompts."""
    rng = random.Random(cfg.seed)
    seen: set[str] = set()
    rows = []
    for _ in range(cfg.n):
        for _attempt in range(100):
            row = word_problem(rng, cfg)
            if row["prompt"] not in seen:
                break
        seen.add(row["prompt"])
        rows.append(row)
    return rows
