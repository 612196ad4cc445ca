"""The environment interface, its limits, the tool-call parser and the registry.

Convention: OpenEnv's ``reset``/``step`` (an episode object; ``reset`` gives the first
observation, ``step(action)`` gives the next observation, a reward and ``done``), with the
action being one assistant turn as text and the observation being chat messages. Why this one:
it is the Gymnasium shape that OpenEnv standardises and that TRL's ``environment_factory`` and
verl's agent loops wrap, so an OpenEnv environment maps onto it one to one; verifiers'
``MultiTurnEnv`` (``env_response(messages, state)``/``is_completed``) is the same loop split in two
methods and would tie the interface to its rollout state dict. The token-level loop (generation,
masks, log-probs, limits on tokens) lives in ``episodes.py``; an environment only sees text.

An environment instance is one episode (``make_environment(name, config)`` builds a fresh one),
so tools may be bound methods that keep state (``countdown``).

Tool calls follow the Hermes/Qwen convention ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
Hostile or broken calls never end an episode by themselves: malformed JSON, an unknown tool,
arguments that do not fit the schema, oversized calls, a tool that raises or times out all come
back to the model as an ``Error: ...`` tool message and are counted in ``metrics``; after
``max_tool_errors`` of them the episode ends (``end_reason = "tool_errors"``, reward 0).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from components.environments.tools import Tool, run_tool

Message = dict[str, str]
EndReason = Literal["done", "max_turns", "max_tokens", "length", "tool_errors"]
TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
TOOL_CALL_END = "</tool_call>"


class EnvironmentConfig(BaseModel):
    """Limits of one episode (part of the recipe beside the environment's name)."""

    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(default=4, ge=1, description="assistant turns per episode")
    max_total_tokens: int = Field(default=512, ge=1, description="tokens after the prompt (model and tool tokens)")
    tool_timeout_s: float = Field(default=2.0, gt=0, description="wall-clock limit of one tool call (s)")
    max_tool_output_chars: int = Field(default=500, ge=16, description="a tool's output is cut to this many characters")
    max_tool_call_chars: int = Field(default=2000, ge=16, description="a tool call longer than this is refused unparsed")
    max_tool_errors: int = Field(default=3, ge=1, description="failed tool calls that end the episode")
    max_attempts: int = Field(default=1, ge=1, description="graded answers per episode: after a wrong one (and "
                              "turns left) the environment says so in a user turn and the model may try again")
    grade_truncated: bool = Field(default=False, description="a turn cut by max_new_tokens without a tool call is "
                                  "graded as an answer (as single-turn rollouts are) instead of ending the episode "
                                  "with reward 0")


class EnvironmentSpec(EnvironmentConfig):
    """A recipe's environment (``rl_train.environment``): a registered name and its episode limits."""

    name: str = Field(description="a registered environment (components.environments): calculator, countdown, ...")

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        try:
            get_environment(v)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None
        return v

    def limits(self) -> EnvironmentConfig:
        return EnvironmentConfig.model_validate(self.model_dump(exclude={"name"}))


@dataclass
class Observation:
    """What ``reset`` gives: the opening messages and the tools' schemas."""

    messages: list[Message]
    tools: list[dict[str, Any]]


@dataclass
class StepResult:
    """What ``step`` gives: tool messages to append, or (done) the final reward."""

    messages: list[Message]
    reward: float = 0.0
    done: bool = False
    end_reason: EndReason | None = None


@dataclass
class ParsedCall:
    name: str | None
    arguments: Any = None
    error: str | None = None  # why the call could not be parsed (kind: message)
    kind: str = "ok"


def parse_tool_calls(text: str, max_call_chars: int) -> list[ParsedCall]:
    """Every complete ``<tool_call>...</tool_call>`` block of ``text``, parsed or with an error."""
    calls = []
    for body in TOOL_CALL_RE.findall(text):
        if len(body) > max_call_chars:
            calls.append(ParsedCall(None, error=f"tool call longer than {max_call_chars} characters", kind="oversized_call"))
            continue
        try:
            obj = json.loads(body)
        except (json.JSONDecodeError, RecursionError) as e:
            calls.append(ParsedCall(None, error=f"tool call is not valid JSON ({e})", kind="malformed_call"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            calls.append(ParsedCall(None, error='a tool call must be {"name": ..., "arguments": {...}}', kind="malformed_call"))
            continue
        calls.append(ParsedCall(obj["name"], obj.get("arguments", {})))
    return calls


class Environment:
    """One episode. Subclasses give ``tools`` and ``reward``; ``opening_messages`` may be overridden."""

    name: ClassVar[str] = ""
    # The system text that introduces the tools when the chat template has no tool format of its
    # own ({tools} is filled with one JSON schema per line); None: chat.HERMES_SYSTEM.
    tool_prompt: ClassVar[str | None] = None

    def __init__(self, config: EnvironmentConfig | None = None) -> None:
        self.config = config or EnvironmentConfig()
        self.row: dict[str, Any] = {}
        self.metrics: Counter[str] = Counter()
        self.turns = self.attempts = 0
        self._tools = {t.name: t for t in self.tools()}

    def tools(self) -> list[Tool]:
        return []

    def opening_messages(self, row: dict[str, Any]) -> list[Message]:
        msgs = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        return msgs + [{"role": "user", "content": str(row["prompt"])}]

    def reward(self, final_text: str) -> float:
        raise NotImplementedError

    def feedback(self, final_text: str) -> str:
        """The user turn after a wrong answer when ``max_attempts`` allows another one."""
        return "That is not correct. Try again."

    def reset(self, row: dict[str, Any]) -> Observation:
        self.row = dict(row)
        self.metrics = Counter()
        self.turns = self.attempts = 0
        return Observation(self.opening_messages(self.row), [t.schema for t in self._tools.values()])

    def step(self, assistant_text: str) -> StepResult:
        """One assistant turn: its tool calls' results, or the final reward when it calls none."""
        self.turns += 1
        calls = parse_tool_calls(assistant_text, self.config.max_tool_call_chars)
        if not calls:
            self.attempts += 1
            reward = float(self.reward(assistant_text))
            if reward < 1.0 and self.attempts < self.config.max_attempts and self.turns < self.config.max_turns:
                self.metrics["retries"] += 1
                return StepResult([{"role": "user", "content": self.feedback(assistant_text)}])
            return StepResult([], reward=reward, done=True, end_reason="done")
        out = [{"role": "tool", "content": self._call(c)} for c in calls]
        failed = sum(v for k, v in self.metrics.items() if k.startswith("tool_fail/"))
        if failed >= self.config.max_tool_errors:
            return StepResult(out, reward=0.0, done=True, end_reason="tool_errors")
        return StepResult(out)

    def _call(self, call: ParsedCall) -> str:
        self.metrics["tool_calls"] += 1
        if call.error is not None:
            self.metrics[f"tool_fail/{call.kind}"] += 1
            return f"Error: {call.error}"
        tool = self._tools.get(call.name or "")
        if tool is None:
            self.metrics["tool_fail/unknown_tool"] += 1
            return f"Error: unknown tool {call.name!r}; available: {sorted(self._tools)}"
        res = run_tool(tool, call.arguments, self.config.tool_timeout_s, self.config.max_tool_output_chars)
        self.metrics["tool_ok" if res.status == "ok" else f"tool_fail/{res.status}"] += 1
        self.metrics["tool_seconds_ms"] += int(res.seconds * 1000)
        if res.truncated:
            self.metrics["tool_output_truncated"] += 1
        return res.text


_REGISTRY: dict[str, type[Environment]] = {}


def register_environment(name: str):
    """Class decorator: ``@register_environment("calculator")`` makes the class selectable by name."""

    def deco(cls: type[Environment]) -> type[Environment]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"environment {name!r} is already registered ({_REGISTRY[name].__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_environment(name: str) -> type[Environment]:
    import components.environments.builtin  # noqa: F401 - registers the built-in environments

    if name not in _REGISTRY:
        raise KeyError(f"unknown environment {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def make_environment(name: str, config: EnvironmentConfig | None = None) -> Environment:
    """A fresh episode of the environment registered as ``name``."""
    return get_environment(name)(config)


def available_environments() -> list[str]:
    import components.environments.builtin  # noqa: F401

    return sorted(_REGISTRY)
