"""Decontamination: drop train prompts that overlap an eval prompt.

Two prompts overlap when they share a contiguous run of m word tokens, m = min(ngram, length of
either prompt) (tokens: lower-cased words and single punctuation marks). So long prompts are
compared by `ngram`-grams (13 by default, the usual benchmark-decontamination size), while a
prompt shorter than `ngram`, such as "What is 23 + 19? Give only the final number." (12 tokens),
is matched as a whole: contained in, or containing, the other prompt. Exact normalised-prompt
matches are always contamination.

Templated prompts share long boilerplate ("... You may use +, -, * and /, and each number
exactly once. Give only the equation." is more than 13 tokens), which would mark every templated
train prompt as contaminated. So an n-gram found in at least `template_df` distinct prompts
(train and eval together, after dedup) is template text; a real leak (one eval prompt copied
into train) gives its n-grams a count of 2. Known limit: an n-gram made of boilerplate plus one
or two specific tokens ("] , create an equation that equals 20 . you may use +") still counts,
so templated prompts that share those tokens with an eval prompt (same countdown target, same
last operands) are dropped: 2 of 6,000 generated rows in a trial with a 10 % eval split.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import PurePosixPath
from typing import Any, Iterable, Sequence

from components.data.errors import CurationError
from components.data.normalize import normalize_text, word_tokens

_PROMPT_KEYS = ("prompt", "question", "problem", "input", "text")


class EvalIndex:
    """N-gram index of eval prompts, queried with train prompts."""

    def __init__(self, ngram: int) -> None:
        self.n = ngram
        self.exact: set[tuple[str, ...]] = set()
        self.long_grams: set[tuple[str, ...]] = set()  # n-grams of eval prompts with >= n tokens
        self.short: dict[int, set[tuple[str, ...]]] = {}  # eval prompts with < n tokens, by length
        self.template: set[tuple[str, ...]] = set()  # n-grams that are boilerplate
        self._all: list[tuple[str, ...]] = []
        self._grams_by_k: dict[int, set[tuple[str, ...]]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def add(self, prompt: str) -> None:
        toks = tuple(word_tokens(normalize_text(prompt)))
        if not toks or toks in self.exact:
            return
        self._all.append(toks)
        self._grams_by_k.clear()
        self.exact.add(toks)
        if len(toks) >= self.n:
            self.long_grams.update(toks[i : i + self.n] for i in range(len(toks) - self.n + 1))
        else:
            self.short.setdefault(len(toks), set()).add(toks)

    def _grams(self, toks: tuple[str, ...]) -> set[tuple[str, ...]]:
        return {toks[i : i + self.n] for i in range(len(toks) - self.n + 1)}

    def drop_template_grams(self, train_prompts: Sequence[str], template_df: int) -> int:
        """Forget n-grams shared by >= template_df distinct prompts (eval and train); returns how many."""
        if template_df <= 0 or not self.long_grams:
            return 0
        df: Counter[tuple[str, ...]] = Counter()
        for toks in self._all:
            df.update(self._grams(toks) & self.long_grams)
        eval_set = set(self._all)
        for prompt in set(train_prompts):
            toks = tuple(word_tokens(normalize_text(prompt)))
            if len(toks) >= self.n and toks not in eval_set:
                df.update(self._grams(toks) & self.long_grams)
        self.template = {g for g, c in df.items() if c >= template_df}
        self.long_grams -= self.template
        return len(self.template)

    def _eval_grams(self, k: int) -> set[tuple[str, ...]]:
        """All k-grams of all eval prompts (k < n), built once per k for short train prompts."""
        if k not in self._grams_by_k:
            self._grams_by_k[k] = {t[i : i + k] for t in self._all for i in range(len(t) - k + 1)}
        return self._grams_by_k[k]

    def match(self, prompt: str) -> str | None:
        """'exact' or 'ngram' when the prompt overlaps an eval prompt, else None."""
        toks = tuple(word_tokens(normalize_text(prompt)))
        if toks in self.exact:
            return "exact"
        if len(toks) >= self.n:
            if any(toks[i : i + self.n] in self.long_grams for i in range(len(toks) - self.n + 1)):
                return "ngram"
        elif toks and toks in self._eval_grams(len(toks)):  # short train prompt inside an eval prompt
            return "ngram"
        for k, tuples in self.short.items():  # short eval prompt inside the train prompt
            if k <= len(toks) and any(toks[i : i + k] in tuples for i in range(len(toks) - k + 1)):
                return "ngram"
        return None


def _prompt_of(record: Any) -> str | None:
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        for key in _PROMPT_KEYS:
            if isinstance(record.get(key), str):
                return record[key]
    return None


def read_eval_prompts(path: str) -> list[str]:
    """Prompts of a user-named eval file (.jsonl/.json/.parquet/.csv/.txt, local or fsspec URL)."""
    import fsspec

    suffix = PurePosixPath(path.split("?")[0]).suffix.lower()
    try:
        with fsspec.open(path, "rb") as f:
            data = f.read()
    except Exception as e:  # noqa: BLE001
        raise CurationError(f"decontam eval file {path!r} cannot be opened: {type(e).__name__}: {e}") from e
    records: Iterable[Any]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        records = pq.read_table(io.BytesIO(data)).to_pylist()
    else:
        text = data.decode("utf-8", errors="replace")
        if suffix == ".jsonl":
            records = []
            for line in text.splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        elif suffix == ".json":
            loaded = json.loads(text)
            records = loaded if isinstance(loaded, list) else [loaded]
        elif suffix == ".csv":
            records = list(csv.DictReader(io.StringIO(text, newline="")))
        elif suffix in (".txt", ""):
            records = [line for line in text.splitlines() if line.strip()]
        else:
            raise CurationError(f"decontam eval file {path!r}: unsupported extension {suffix!r}")
    prompts = [p for p in map(_prompt_of, records) if p]
    if not prompts:
        raise CurationError(f"decontam eval file {path!r}: no prompts found (looked for columns {list(_PROMPT_KEYS)})")
    return prompts
