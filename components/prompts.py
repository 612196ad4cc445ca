"""How a dataset row becomes the chat messages a policy sees (RL, difficulty, evaluation, compression).

One place, so every stage prompts the model the same way and none imports another for it.
"""

from __future__ import annotations

import json
from typing import Any

from components.engines.base import Message


def messages_for(row: dict[str, Any]) -> list[Message]:
    """The row's optional system prompt, then its prompt as the user turn."""
    msgs: list[Message] = []
    if row.get("system"):
        msgs.append({"role": "system", "content": row["system"]})
    msgs.append({"role": "user", "content": row["prompt"]})
    return msgs


def row_meta(row: dict[str, Any]) -> dict[str, Any]:
    """A row's ``meta`` as a dict (curated rows store it as a JSON string; bad JSON gives {})."""
    m = row.get("meta")
    if isinstance(m, str):
        try:
            return json.loads(m) if m else {}
        except json.JSONDecodeError:
            return {}
    return m or {}
