"""The built-in tools' logic: a safe arithmetic evaluator and a unit converter (lookup table).

``evaluate`` parses with ``ast.parse(mode="eval")`` and walks a whitelist: numeric literals,
``+ - * / // % **``, unary ``-``/``+`` and parentheses (which leave no node). Names, calls,
attributes, subscripts, comparisons and every other node are refused, so model output is never
``eval``'d or executed. Bounds: expression length, nesting depth, exponent size, and the
magnitude of every intermediate result (so ``9**9**9`` or ``10**10**10`` fail fast instead of
building a huge integer).
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Any, Callable

from components.environments.tools import ToolError

MAX_EXPRESSION_CHARS = 200
MAX_DEPTH = 40
MAX_EXPONENT = 1000
MAX_DIGITS = 60  # |value| < 10**MAX_DIGITS for every intermediate result

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}


def _bounded(value: int | float) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("result is not a finite number")
    if abs(value) >= 10**MAX_DIGITS:
        raise ToolError(f"result exceeds {MAX_DIGITS} digits")
    return value


def _power(a: int | float, b: int | float) -> int | float:
    if abs(b) > MAX_EXPONENT:
        raise ToolError(f"exponent {b} exceeds {MAX_EXPONENT}")
    if a != 0 and abs(a) != 1 and abs(b) * math.log10(abs(a)) >= MAX_DIGITS:
        raise ToolError(f"result exceeds {MAX_DIGITS} digits")
    if a == 0 and b < 0:
        raise ToolError("division by zero")
    return a**b


def _walk(node: ast.AST, depth: int) -> int | float:
    if depth > MAX_DEPTH:
        raise ToolError("expression nested too deeply")
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _walk(node.operand, depth + 1)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _walk(node.left, depth + 1), _walk(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            result = _power(a, b)
        else:
            try:
                result = _BINOPS[type(node.op)](a, b)
            except ZeroDivisionError:
                raise ToolError("division by zero") from None
        if isinstance(result, complex):
            raise ToolError("result is not a real number")
        return _bounded(result)
    raise ToolError(f"unsupported syntax: {type(node).__name__}")


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression over the whitelist; raises ToolError otherwise."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ToolError(f"not an arithmetic expression: {type(e).__name__}") from None
    value = _walk(tree.body, 0)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def format_number(value: int | float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.10g}"


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / // % ** and parentheses.

    Args:
        expression: the arithmetic expression, for example "(12 + 30) * 7"
    """
    return format_number(evaluate(expression))


# Factor to the dimension's base unit (metre, kilogram, second, litre).
UNITS: dict[str, tuple[str, float]] = {
    "m": ("length", 1.0), "km": ("length", 1000.0), "cm": ("length", 0.01), "mm": ("length", 0.001),
    "mi": ("length", 1609.344), "yd": ("length", 0.9144), "ft": ("length", 0.3048), "in": ("length", 0.0254),
    "kg": ("mass", 1.0), "g": ("mass", 0.001), "mg": ("mass", 1e-6), "lb": ("mass", 0.45359237),
    "oz": ("mass", 0.028349523125), "t": ("mass", 1000.0),
    "s": ("time", 1.0), "min": ("time", 60.0), "h": ("time", 3600.0), "day": ("time", 86400.0),
    "week": ("time", 604800.0),
    "l": ("volume", 1.0), "ml": ("volume", 0.001), "gal": ("volume", 3.785411784),
}
_TEMPERATURE = {"c", "f", "k"}


def _to_kelvin(v: float, unit: str) -> float:
    return {"c": v + 273.15, "f": (v - 32) * 5 / 9 + 273.15, "k": v}[unit]


def _from_kelvin(v: float, unit: str) -> float:
    return {"c": v - 273.15, "f": (v - 273.15) * 9 / 5 + 32, "k": v}[unit]


def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    """Convert a quantity between units of length, mass, time, volume or temperature.

    Args:
        value: the quantity to convert
        from_unit: its unit, one of m km cm mm mi yd ft in kg g mg lb oz t s min h day week l ml gal c f k
        to_unit: the unit to convert to (same dimension)
    """
    src, dst = from_unit.strip().lower(), to_unit.strip().lower()
    if src in _TEMPERATURE and dst in _TEMPERATURE:
        return format_number(round(_from_kelvin(_to_kelvin(float(value), src), dst), 10))
    if src not in UNITS or dst not in UNITS:
        bad = [u for u in (from_unit, to_unit) if u.strip().lower() not in UNITS and u.strip().lower() not in _TEMPERATURE]
        raise ToolError(f"unknown unit {bad[0] if bad else from_unit!r}; known: {' '.join(sorted(UNITS))} c f k")
    (dim_a, fa), (dim_b, fb) = UNITS[src], UNITS[dst]
    if dim_a != dim_b:
        raise ToolError(f"cannot convert {dim_a} ({from_unit}) to {dim_b} ({to_unit})")
    out = round(float(value) * fa / fb, 10)
    return format_number(int(out) if out.is_integer() else out)
