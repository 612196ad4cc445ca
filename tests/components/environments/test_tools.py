"""Tools and environments at the text level: the safe evaluator, schemas, limits, hostile calls."""

from __future__ import annotations

import json
import threading
import time

import pytest

from components.data.config import CountdownSource
from components.data.generators import generate_countdown
from components.environments import (
    EnvironmentConfig,
    Tool,
    ToolError,
    available_environments,
    get_environment,
    make_environment,
    register_environment,
    run_tool,
)
from components.environments.arithmetic import MAX_DIGITS, UNITS, calculator, convert_units, evaluate
from components.environments.builtin import CalculatorEnvironment


def call(name: str, **arguments) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


@pytest.mark.parametrize("expr, value", [
    ("(12 + 30) * 7", (12 + 30) * 7), ("-3 ** 2", -(3**2)), ("17 // 5 + 17 % 5", 17 // 5 + 17 % 5),
    ("2 ** -1", 2**-1), ("1.5 * 4", 6), ("+7 - -2", 9), ("10 / 4", 10 / 4),
])
def test_calculator_evaluates_the_whitelist(expr, value):
    assert evaluate(expr) == value
    assert calculator(expr) == (str(int(value)) if float(value).is_integer() else f"{value:.10g}")


@pytest.mark.parametrize("expr", [
    "__import__('os').system('echo hi')", "a + 1", "(1).real", "[1, 2]", "1 if 1 else 2", "True + 1",
    "9 ** 9 ** 9", "2 ** 10000", f"10 ** {MAX_DIGITS - 1} * 10 ** 5", "1 / 0", "5 % 0", "0 ** -1",
    "1" * 300, "-" * 60 + "1", "1e308 * 10", "(-8) ** 0.5", "lambda: 1", "1 +",
])
def test_calculator_refuses_everything_else_quickly(expr):
    t0 = time.perf_counter()
    with pytest.raises(ToolError):
        evaluate(expr)
    assert time.perf_counter() - t0 < 0.5


def test_unit_converter_uses_its_table():
    assert float(convert_units(3, "km", "m")) == pytest.approx(3 * UNITS["km"][1] / UNITS["m"][1])
    assert float(convert_units(10, "lb", "kg")) == pytest.approx(10 * UNITS["lb"][1])
    assert convert_units(212, "F", "C") == "100" and convert_units(0, "c", "k") == str(273.15)
    for args in [(1, "kg", "m"), (1, "parsec", "m")]:
        with pytest.raises(ToolError):
            convert_units(*args)


def test_a_user_tool_in_a_few_lines_gets_its_schema_from_the_signature():
    def shout(text: str, times: int = 1) -> str:
        """Repeat a text in capitals.

        Args:
            text: what to shout
            times: how many times
        """
        return " ".join([text.upper()] * times)

    tool = Tool.of(shout)
    fn = tool.schema["function"]
    assert tool.name == "shout" and fn["description"] == "Repeat a text in capitals."
    assert fn["parameters"]["properties"]["times"]["type"] == "integer"
    assert fn["parameters"]["required"] == ["text"]
    assert run_tool(tool, {"text": "hi", "times": 2}, 1.0, 100).text == "HI HI"
    for bad in ({"times": 2}, {"text": "hi", "loud": True}, {"text": 3}, {"text": "x", "times": True}, [1]):
        out = run_tool(tool, bad, 1.0, 100)
        assert out.status == "bad_arguments" and out.text.startswith("Error:")
    long = run_tool(tool, {"text": "ab", "times": 500}, 1.0, 40)
    assert long.truncated and len(long.text) == 40 and long.text.endswith("[truncated]")


def test_timeout_works_off_the_main_thread():
    def stuck(seconds: float) -> str:
        """Sleep.

        Args:
            seconds: how long
        """
        time.sleep(seconds)
        return "woke"

    box = {}
    t0 = time.perf_counter()
    worker = threading.Thread(target=lambda: box.update(out=run_tool(Tool.of(stuck), {"seconds": 20}, 0.2, 100)))
    worker.start()
    worker.join(10)
    assert box["out"].status == "timeout" and time.perf_counter() - t0 < 5


def test_hostile_tool_calls_become_counted_error_messages():
    env = make_environment("calculator", EnvironmentConfig(max_tool_errors=10, max_tool_call_chars=300))
    env.reset({"prompt": "q", "answer": "5"})
    hostile = {
        "malformed_call": "<tool_call>{\"name\": \"calculator\", \"arguments\": {</tool_call>",
        "unknown_tool": call("shell", cmd="rm -rf /"),
        "oversized_call": call("calculator", expression="1+" * 500 + "1"),
        "bad_arguments": call("calculator", expression=["1", "+", "1"]),
        "error": call("calculator", expression="__import__('os')"),
    }
    for kind, text in hostile.items():
        res = env.step(text)
        assert not res.done and res.messages[0]["role"] == "tool" and res.messages[0]["content"].startswith("Error:")
        assert env.metrics[f"tool_fail/{kind}"] == 1
    assert env.metrics["tool_calls"] == len(hostile)
    nested = "<tool_call>" + "[" * 100_000 + "</tool_call>"
    assert env.step(nested).messages[0]["content"].startswith("Error:")
    done = env.step("So it is 5.")
    assert done.done and done.reward == 1.0 and done.end_reason == "done"


def test_repeated_tool_errors_end_the_episode():
    env = make_environment("calculator", EnvironmentConfig(max_tool_errors=2))
    env.reset({"prompt": "q", "answer": "5"})
    assert not env.step(call("nope")).done
    last = env.step(call("calculator", expression="1/0"))
    assert last.done and last.end_reason == "tool_errors" and last.reward == 0.0


def test_registry():
    assert {"calculator", "countdown"} <= set(available_environments())
    assert get_environment("calculator") is CalculatorEnvironment
    with pytest.raises(KeyError, match="calculator"):
        get_environment("no-such-env")
    with pytest.raises(ValueError, match="already registered"):
        register_environment("calculator")(type("Other", (CalculatorEnvironment,), {}))


def test_countdown_is_multi_step_and_stateful():
    row = generate_countdown(CountdownSource(name="cd", n=1, num_numbers=3, seed=4))[0]
    numbers, target = row["meta"]["numbers"], row["meta"]["target"]
    env = make_environment("countdown")
    obs = env.reset(row)
    assert [t["function"]["name"] for t in obs.tools] == ["combine"]
    assert env.step(row["meta"]["solution"]).reward == 1.0  # an equation using every number once
    env.reset(row)
    missing = max(numbers) + 1
    assert env.step(call("combine", a=missing, op="+", b=numbers[0])).messages[0]["content"].startswith("Error:")
    a, b = numbers[0], numbers[1]
    out = env.step(call("combine", a=a, op="+", b=b)).messages[0]["content"]
    assert env.pool == numbers[2:] + [a + b]
    assert str(a + b) in out
    wrong = env.step(f"The answer is {target + 1}.")
    assert wrong.done and wrong.reward == 0.0


def test_countdown_rewards_reaching_the_target_by_steps():
    env = make_environment("countdown")
    env.reset({"prompt": "Make 22 from [3, 5, 7].", "answer": "22", "meta": {"numbers": [3, 5, 7], "target": 22}})
    env.step(call("combine", a=3, op="*", b=5))
    assert "not a whole number" in env.step(call("combine", a=15, op="/", b=7)).messages[0]["content"]
    assert env.pool == [7, 15]
    assert env.step(call("combine", a=15, op="+", b=7)).messages[0]["content"].endswith("pool: [22]")
    assert env.step("22").reward == 1.0


def test_worked_calculator_opens_with_episodes_the_calculator_itself_agrees_with():
    from components.environments.builtin import WORKED_EPISODES

    env = make_environment("calculator_worked", EnvironmentConfig())
    msgs = env.reset({"prompt": "What is 6 * 7?", "answer": "42"}).messages
    shots = [m for ep in WORKED_EPISODES for m in ep]
    assert [t.name for t in env.tools()] == ["calculator"]
    assert msgs[-1] == {"role": "user", "content": "What is 6 * 7?"} and shots == msgs[-1 - len(shots):-1]
    for ep in WORKED_EPISODES:  # each shown call, run through this environment, gives the shown result
        call_turn, result, answer = ep[1]["content"], ep[2]["content"], ep[3]["content"]
        assert env.step(call_turn).messages[0]["content"] == result == answer
    assert env.step("42").reward == 1.0
