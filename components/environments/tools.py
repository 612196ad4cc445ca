"""Tools: plain Python functions with a JSON schema derived from their signature and docstring.

A tool is any function with type hints and a Google-style docstring (an ``Args:`` section);
``Tool.of(fn)`` builds its schema with ``transformers.utils.get_json_schema``, the same
function ``apply_chat_template(..., tools=[fn])`` uses, so a schema never drifts from the code.
Bound methods work too (the environment's own state, as in ``countdown``).

``run_tool`` calls a tool under the episode's limits: arguments are checked against the schema,
the call runs in a daemon worker thread with a deadline (never SIGALRM, so it works off the main
thread), and its output is cut to a size. It never raises: every failure comes back as a
``ToolOutcome`` with a ``status`` that the episode counts, and an error text the model reads.
A tool that hangs cannot be killed from Python: its thread is abandoned (daemon, so it never
blocks interpreter exit) and the episode moves on.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Literal

ToolStatus = Literal["ok", "error", "timeout", "bad_arguments"]
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list,), "object": (dict,),
}


class ToolError(Exception):
    """Raised by a tool for a bad input; its message is shown to the model as the tool output."""


@dataclass(frozen=True)
class Tool:
    """A callable with its function schema (``{"type": "function", "function": {...}}``)."""

    fn: Callable[..., Any]
    schema: dict[str, Any]

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> Tool:
        from transformers.utils import get_json_schema

        schema = get_json_schema(fn)
        schema["function"].pop("return", None)
        schema.pop("return", None)
        return cls(fn=fn, schema=schema)

    @property
    def name(self) -> str:
        return str(self.schema["function"]["name"])


@dataclass
class ToolOutcome:
    text: str
    status: ToolStatus
    seconds: float = 0.0
    truncated: bool = False


def check_arguments(tool: Tool, args: Any) -> str | None:
    """Why ``args`` do not fit the tool's schema (missing, unknown or wrongly typed), or None."""
    if not isinstance(args, dict):
        return f"arguments must be a JSON object, got {type(args).__name__}"
    params = tool.schema["function"].get("parameters", {})
    props = params.get("properties", {})
    missing = [k for k in params.get("required", []) if k not in args]
    unknown = [k for k in args if k not in props]
    if missing or unknown:
        return f"missing arguments {missing}, unknown arguments {unknown}; expected {sorted(props)}"
    for key, value in args.items():
        want = props[key].get("type")
        ok = _JSON_TYPES.get(want, (object,)) if isinstance(want, str) else (object,)
        if not isinstance(value, ok) or (want in ("integer", "number") and isinstance(value, bool)):
            return f"argument {key!r} must be of type {want}, got {type(value).__name__}"
    return None


def run_tool(tool: Tool, args: Any, timeout_s: float, max_output_chars: int) -> ToolOutcome:
    """Call ``tool`` with ``args`` in a worker thread with a deadline; never raises."""
    import time

    problem = check_arguments(tool, args)
    if problem is not None:
        return ToolOutcome(f"Error: {problem}", "bad_arguments")
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = tool.fn(**args)
        except ToolError as e:
            box["error"] = f"Error: {e}"
        except Exception as e:  # noqa: BLE001 - a tool's failure is the model's tool output
            box["error"] = f"Error: {type(e).__name__}: {e}"

    t0 = time.perf_counter()
    worker = threading.Thread(target=work, name=f"tool-{tool.name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    seconds = time.perf_counter() - t0
    if worker.is_alive():
        return ToolOutcome(f"Error: tool {tool.name!r} timed out after {timeout_s:g} s", "timeout", seconds)
    if "error" in box:
        return _cut(ToolOutcome(str(box["error"]), "error", seconds), max_output_chars)
    return _cut(ToolOutcome(str(box.get("value")), "ok", seconds), max_output_chars)


def _cut(out: ToolOutcome, max_chars: int) -> ToolOutcome:
    if len(out.text) <= max_chars:
        return out
    marker = " [truncated]"
    out.text = out.text[: max(0, max_chars - len(marker))] + marker
    out.truncated = True
    return out
