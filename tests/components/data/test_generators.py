"""Arithmetic and countdown generators: determinism and answers checked by independent evaluation."""

import ast
import re
from collections import Counter

from components.data.config import ArithmeticSource, CountdownSource
from components.data.generators import generate_arithmetic, generate_countdown


def _eval_exact(expr: str) -> int:
    """Evaluate + - * / with Python precedence, asserting every division is exact."""

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Constant):
            return node.value
        assert isinstance(node, ast.BinOp)
        a, b = ev(node.left), ev(node.right)
        if isinstance(node.op, ast.Div):
            assert b != 0 and a % b == 0, f"inexact division in {expr}"
            return a // b
        return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}[type(node.op)]

    return ev(ast.parse(expr, mode="eval").body)


def _expr(prompt: str) -> str:
    return re.fullmatch(r"What is (.*)\? Give only the final number\.", prompt).group(1)


def test_arithmetic_answers_and_knobs() -> None:
    cfg = ArithmeticSource(name="a", n=400, digits=[1, 2], operators=["+", "-", "*", "/"], num_ops=[1, 3], seed=7)
    rows = generate_arithmetic(cfg)
    assert len(rows) == 400
    seen_ops = Counter()
    for r in rows:
        expr = _expr(r["prompt"])
        assert int(r["answer"]) == _eval_exact(expr)
        tokens = expr.split()
        operands, ops = tokens[0::2], tokens[1::2]
        assert 1 <= len(ops) <= 3
        assert all(1 <= len(x) <= 2 for x in operands)
        seen_ops.update(ops)
    assert set(seen_ops) == {"+", "-", "*", "/"}
    assert len({r["prompt"] for r in rows}) == 400  # distinct: the space is far larger than 400


def test_arithmetic_determinism_and_seed() -> None:
    cfg = ArithmeticSource(name="a", n=50, digits=2, operators=["+"], seed=1)
    assert generate_arithmetic(cfg) == generate_arithmetic(cfg)
    other = generate_arithmetic(cfg.model_copy(update={"seed": 2}))
    assert [r["prompt"] for r in other] != [r["prompt"] for r in generate_arithmetic(cfg)]


def test_arithmetic_small_space_and_no_negatives() -> None:
    # one-digit a + b with operands 1..9: exactly 9 * 9 = 81 distinct prompts exist
    rows = generate_arithmetic(ArithmeticSource(name="a", n=200, digits=1, operators=["+"]))
    assert len({r["prompt"] for r in rows}) == 81
    rows = generate_arithmetic(ArithmeticSource(name="a", n=200, digits=2, operators=["-"], allow_negative=False))
    assert all(int(r["answer"]) >= 0 for r in rows)
    rows = generate_arithmetic(ArithmeticSource(name="a", n=100, digits=2, operators=["/"]))
    for r in rows:
        a, b = map(int, _expr(r["prompt"]).split(" / "))
        assert a % b == 0 and int(r["answer"]) == a // b


def test_countdown_solutions() -> None:
    cfg = CountdownSource(name="c", n=100, num_numbers=4, max_number=50, target_range=(10, 60), seed=3)
    rows = generate_countdown(cfg)
    assert rows == generate_countdown(cfg)
    for r in rows:
        import json

        meta = r["meta"]
        nums, target = meta["numbers"], meta["target"]
        assert len(nums) == 4 and all(1 <= x <= 50 for x in nums)
        assert 10 <= target <= 60 and r["answer"] == str(target) and r["task"] == "countdown"
        # the reference solution uses every number exactly once and reaches the target
        assert Counter(int(x) for x in re.findall(r"\d+", meta["solution"])) == Counter(nums)
        assert _eval_exact(meta["solution"]) == target
        assert f"equals {target}." in r["prompt"] and json.dumps(nums)[1:-1] in r["prompt"]
