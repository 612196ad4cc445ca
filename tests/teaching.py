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
