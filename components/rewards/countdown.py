"""Countdown: reach a target from given numbers with + - * / (checked without ``eval``)."""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

from pydantic import Field

from components.rewards.base import RewardConfig, RewardFn, RewardResult
from components.rewards.registry import register


class CountdownConfig(RewardConfig):
    max_value: float = Field(1e12, gt=0, description="reject any intermediate value above this")
    max_expr_chars: int = Field(512, gt=0)
    require_all: bool = Field(False, description="every given number must be used")


class _RuleViolation(Exception):
    """The expression breaks the countdown rules (scored 0, error='invalid')."""


_ARITH_RUN_RE = re.compile(r"[\d()+\-*/ \t.]+")
_OPS_MAP = str.maketrans({"\u00d7": "*", "\u00f7": "/", "\u22c5": "*", "\u00b7": "*"})


@register
class CountdownReward(RewardFn):
    """Countdown: reach ``meta["target"]`` from ``meta["numbers"]`` with + - * / and parentheses.

    The expression is the last ``<answer>...</answer>`` content, else the last non-empty line; a
    trailing ``= 50`` is dropped. It is parsed with :mod:`ast` and evaluated by a whitelist walker
    over exact rationals (never ``eval``): only integer literals, binary + - * /, unary minus; each
    given number used at most as often as it is given; any intermediate value above ``max_value``
    in magnitude, or a division by zero, makes it invalid. Score 1.0 iff the value equals the
    target exactly. A Python-invalid candidate line falls back to its longest arithmetic run.
    """

    name = "countdown"
    version = "1"
    Config = CountdownConfig
    config: CountdownConfig

    # -- reference -------------------------------------------------------------------------
    def _target(self, answer: str, meta: dict | None) -> int | None:
        raw = (meta or {}).get("target", answer)
        try:
            value = Fraction(str(raw).strip())
        except (ValueError, ZeroDivisionError):
            return None
        return int(value) if value.denominator == 1 and abs(value) <= self.config.max_value else None

    def canonical_answer(self, answer: str) -> str | None:
        target = self._target(answer, None)
        return None if target is None else str(target)

    def can_verify(self, answer: str, meta: dict | None = None) -> bool:
        try:
            return self._target(answer, meta) is not None and bool(self._numbers(meta))
        except Exception:  # noqa: BLE001
            return False

    def _numbers(self, meta: dict | None) -> list[int]:
        nums = (meta or {}).get("numbers")
        if not nums:
            raise ValueError("countdown needs meta['numbers']")
        out = [int(n) for n in nums]
        if len(out) > 64 or any(abs(n) > self.config.max_value for n in out):
            raise ValueError("countdown numbers out of range")
        return out

    # -- completion ------------------------------------------------------------------------
    def _candidate(self, text: str) -> str | None:
        end = text.rfind("</answer>")
        if end >= 0:
            start = text.rfind("<answer>", 0, end)
            if start >= 0:
                return text[start + len("<answer>"): end]
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return lines[-1] if lines else None

    def _evaluate(self, expr: str, numbers: list[int]) -> tuple[Fraction, int]:
        """Value of ``expr`` and how many numbers it used; raises _RuleViolation / SyntaxError."""
        tree = ast.parse(expr.strip(), mode="eval")
        literals = [n for n in ast.walk(tree) if isinstance(n, ast.Constant)]
        if len(literals) > len(numbers):
            raise _RuleViolation("more literals than numbers")
        pool = Counter(numbers)
        limit = self.config.max_value

        def check(v: Fraction) -> Fraction:
            if abs(v) > limit:
                raise _RuleViolation("intermediate value too large")
            return v

        def walk(node: ast.AST) -> Fraction:
            if isinstance(node, ast.Expression):
                return walk(node.body)
            if isinstance(node, ast.Constant):
                v = node.value
                if type(v) is not int:  # bool, float, str, complex all refused
                    raise _RuleViolation("only integer literals")
                if pool[v] <= 0:
                    raise _RuleViolation(f"number {v} not available")
                pool[v] -= 1
                return check(Fraction(v))
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
                return check(-walk(node.operand))
            if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
                a, b = walk(node.left), walk(node.right)
                if isinstance(node.op, ast.Add):
                    return check(a + b)
                if isinstance(node.op, ast.Sub):
                    return check(a - b)
                if isinstance(node.op, ast.Mult):
                    return check(a * b)
                if b == 0:
                    raise _RuleViolation("division by zero")
                return check(a / b)
            raise _RuleViolation(f"{type(node).__name__} not allowed")

        value = walk(tree)
        return value, len(numbers) - sum(pool.values())

    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        target = self._target(answer, meta)
        try:
            numbers = self._numbers(meta)
        except (ValueError, TypeError):
            numbers = None
        if target is None or numbers is None:
            return RewardResult(0.0, {}, "invalid")
        text = self._text(completion).translate(_OPS_MAP)
        text = text.replace("\\times", "*").replace("\\cdot", "*").replace("\\div", "/")
        cand = self._candidate(text)
        if cand is None:
            return RewardResult(0.0, {"valid": 0.0}, "unparseable")
        sides = [s for s in cand.split("=") if s.strip()]
        if not sides:
            return RewardResult(0.0, {"valid": 0.0}, "unparseable")
        # Prefer the side that is an expression (has an operator) over a bare "50".
        with_op = [s for s in sides if any(op in s for op in "+-*/")]
        expr = (with_op or sides)[0].strip().rstrip(".")
        if len(expr) > self.config.max_expr_chars:
            return RewardResult(0.0, {"valid": 0.0}, "unparseable")
        try:
            try:
                value, used = self._evaluate(expr, numbers)
            except SyntaxError:
                runs = [r.strip() for r in _ARITH_RUN_RE.findall(expr) if any(c.isdigit() for c in r)]
                if not runs:
                    raise
                value, used = self._evaluate(max(runs, key=len), numbers)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return RewardResult(0.0, {"valid": 0.0}, "unparseable")
        except _RuleViolation:
            return RewardResult(0.0, {"valid": 0.0}, "invalid")
        if self.config.require_all and used != len(numbers):
            return RewardResult(0.0, {"valid": 0.0, "used": float(used)}, "invalid")
        return RewardResult(float(value == target), {"valid": 1.0, "used": float(used)})
