"""Teach a tiny random model one token sequence, so multi-turn tests see it really call a tool."""

from __future__ import annotations

from typing import Any

import torch


def teach(model: Any, ids: list[int], mask: list[int], steps: int = 300, lr: float = 2e-2) -> None:
    """Fit ``model`` to predict the tokens of ``ids`` whose ``mask`` is 1 (greedy-exact, loss < 0.05)."""
    x, sel = torch.tensor([ids]), torch.tensor(mask[1:], dtype=torch.bool)
    target = x[0, 1:][sel]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    torch.manual_seed(0)
    for _ in range(steps):
        logits = model(input_ids=x).logits[0, :-1][sel]
        loss = torch.nn.functional.cross_entropy(logits, target)
        if bool((logits.argmax(-1) == target).all()) and float(loss.detach()) < 0.05:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def short_calculator(name: str, tool_prompt: str):
    """Register (under ``name``) the calculator environment with only the calculator tool and a
    short tool prompt, so that a tiny model's context holds the whole episode."""
    from components.environments import Tool, register_environment
    from components.environments.arithmetic import calculator
    from components.environments.builtin import CalculatorEnvironment

    class ShortCalculator(CalculatorEnvironment):
        def tools(self) -> list[Tool]:
            return [Tool.of(calculator)]

    ShortCalculator.tool_prompt = tool_prompt
    return register_environment(name)(ShortCalculator)


def teach_episode(model: Any, tok: Any, env_cls: Any, row: dict, call: str, answer: str, **kw: Any) -> list[int]:
    """Teach ``model`` the episode: ``call`` (the model's), the calculator's result (tool turn, mask
    0), then ``answer`` and EOS (the model's); returns the episode's ids."""
    import re

    from components.environments.arithmetic import calculator
    from components.environments.chat import prompt_ids, tool_turn_ids

    obs = env_cls().reset(row)
    prompt = prompt_ids(tok, obs.messages, obs.tools, env_cls.tool_prompt)
    expr = re.search(r'"expression": "([^"]+)"', call)
    assert expr is not None, call
    segs = [(tok(call, add_special_tokens=False)["input_ids"], 1),
            (tool_turn_ids(tok, [{"role": "tool", "content": calculator(expr.group(1))}]), 0),
            (tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id], 1)]
    ids = prompt + [t for s, _ in segs for t in s]
    mask = [0] * len(prompt) + [m for s, m in segs for _ in s]
    teach(model, ids, mask, **kw)
    with torch.no_grad():  # greedy decoding reproduces every model token of the episode
        pred = model(input_ids=torch.tensor([ids])).logits[0, :-1].argmax(-1)
    assert all(int(p) == t for p, t, m in zip(pred, ids[1:], mask[1:]) if m), "teaching did not converge"
    return ids
