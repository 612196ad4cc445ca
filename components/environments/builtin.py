"""Built-in environments: ``calculator`` (arithmetic and unit conversion) and ``countdown``.

Rows are the curated schema (``prompt``, ``answer``, optional ``system``, ``meta`` as a JSON
string or a dict). The final answer is the last number of the last assistant turn.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from components.environments.arithmetic import calculator, convert_units, evaluate, format_number
from components.environments.base import Environment, Message, Observation, register_environment
from components.environments.tools import Tool, ToolError

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def same_number(text: str, answer: Any, rel: float = 1e-6) -> bool:
    got = last_number(text)
    try:
        want = float(str(answer).replace(",", ""))
    except ValueError:
        return False
    return got is not None and abs(got - want) <= rel * max(1.0, abs(want))


def row_meta(row: dict[str, Any]) -> dict[str, Any]:
    meta = row.get("meta") or {}
    return json.loads(meta) if isinstance(meta, str) else dict(meta)


@register_environment("calculator")
class CalculatorEnvironment(Environment):
    """Word problems and arithmetic with a calculator and a unit converter; reward 1 for the right number."""

    def tools(self) -> list[Tool]:
        return [Tool.of(calculator), Tool.of(convert_units)]

    def reward(self, final_text: str) -> float:
        return 1.0 if same_number(final_text, self.row.get("answer")) else 0.0


@register_environment("countdown")
class CountdownEnvironment(Environment):
    """Reach a target from given numbers, one ``combine`` step at a time (a multi-step, stateful tool).

    ``meta`` holds ``numbers`` and ``target`` (the countdown source writes both). Each ``combine``
    replaces two numbers of the pool by their result; the reward is 1 when the target is in the
    pool after at least one step and the final answer names it, or when the final answer is an
    equation that uses every given number once and evaluates to the target.
    """

    def reset(self, row: dict[str, Any]) -> Observation:
        meta = row_meta(row)
        self.numbers = [int(x) for x in meta.get("numbers", [])]
        self.target = int(meta.get("target", row.get("answer", 0)))
        self.pool = list(self.numbers)
        self.steps = 0
        return super().reset(row)

    def tools(self) -> list[Tool]:
        return [Tool.of(self.combine)]

    def opening_messages(self, row: dict[str, Any]) -> list[Message]:
        hint = (" Use the combine tool to merge two numbers at a time; when the target is in the pool, "
                "answer with it.")
        return [{"role": "user", "content": str(row["prompt"]) + hint}]

    def combine(self, a: int, op: str, b: int) -> str:
        """Replace two numbers of the pool by a op b and return the new pool.

        Args:
            a: a number in the pool
            op: one of + - * /
            b: another number in the pool
        """
        left = Counter(self.pool)
        left[a] -= 1
        left[b] -= 1
        if op not in ("+", "-", "*", "/"):
            raise ToolError(f"op must be one of + - * /, got {op!r}")
        if left[a] < 0 or left[b] < 0:
            raise ToolError(f"{a} and {b} must both be in the pool {self.pool}")
        if op == "/" and (b == 0 or a % b):
            raise ToolError(f"{a} / {b} is not a whole number")
        value = int(evaluate(f"{a} {op} {b}"))
        self.pool.remove(a)
        self.pool.remove(b)
        self.pool.append(value)
        self.steps += 1
        return f"{a} {op} {b} = {value}; pool: {self.pool}"

    def reward(self, final_text: str) -> float:
        if self.steps and self.target in self.pool and same_number(final_text, self.target):
            return 1.0
        return 1.0 if self._equation_ok(final_text) else 0.0

    def _equation_ok(self, text: str) -> bool:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        if not lines:
            return False
        expr = lines[-1].split("=")[0].strip()
        used = sorted(int(x) for x in re.findall(r"\d+", expr))
        if used != sorted(self.numbers):
            return False
        try:
            return format_number(evaluate(expr)) == str(self.target)
        except ToolError:
            return False


WORKED_EPISODES: list[list[Message]] = [
    [{"role": "user", "content": "What is 23 * 47? Call the calculator tool, then give only the final number."},
     {"role": "assistant", "content": '<tool_call>\n{"name": "calculator", "arguments": {"expression": "23 * 47"}}\n</tool_call>'},
     {"role": "tool", "content": "1081"},
     {"role": "assistant", "content": "1081"}],
    [{"role": "user", "content": "Sam has 58 apples and buys 7 bags of 12 apples. How many apples does he have? "
                                 "Call the calculator tool, then give only the final number."},
     {"role": "assistant", "content": '<tool_call>\n{"name": "calculator", "arguments": {"expression": "58 + 7 * 12"}}\n</tool_call>'},
     {"role": "tool", "content": "142"},
     {"role": "assistant", "content": "142"}],
]


@register_environment("calculator_worked")
class WorkedCalculatorEnvironment(CalculatorEnvironment):
    """``calculator`` with only the calculator tool and worked episodes (question, call, result, answer)
    as chat turns before the question: SmolLM2-135M copies the call format from turns, not from the
    system prompt's description (measured in the README's ``tools`` section)."""

    def tools(self) -> list[Tool]:
        return [Tool.of(calculator)]

    def opening_messages(self, row: dict[str, Any]) -> list[Message]:
        shots = [m for ep in WORKED_EPISODES for m in ep]
        msgs = super().opening_messages(row)
        head = [m for m in msgs if m["role"] == "system"]
        return head + shots + [m for m in msgs if m["role"] != "system"]
