"""A bounded sample of rejected rows, written to rejects.jsonl for debugging a curation run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any


class RejectLog:
    """Keeps at most `per_reason` examples for each (stage, reason); counts are kept elsewhere."""

    def __init__(self, per_reason: int = 20, max_chars: int = 500) -> None:
        self.per_reason = per_reason
        self.max_chars = max_chars
        self._seen: Counter[tuple[str, str]] = Counter()
        self.samples: list[dict[str, Any]] = []

    def add(self, *, stage: str, reason: str, source: str, detail: str = "", record: Any = None,
            location: int | None = None) -> None:
        key = (stage, reason)
        self._seen[key] += 1
        if self._seen[key] > self.per_reason:
            return
        if isinstance(record, dict):  # cut long values first: repr of a 50 MB prompt is slow
            record = {k: v[: self.max_chars] if isinstance(v, str) else v for k, v in record.items()}
        raw = record if isinstance(record, str) else repr(record)
        self.samples.append(
            {"stage": stage, "reason": reason, "source": source, "location": location,
             "detail": detail[: self.max_chars], "record": raw[: self.max_chars]}
        )

    def write(self, path: Path) -> None:
        with path.open("w", encoding="utf-8") as f:
            for s in self.samples:
                f.write(json.dumps(s, ensure_ascii=True, sort_keys=True) + "\n")
