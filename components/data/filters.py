"""Row filters applied before dedup and decontamination, one pass per filter so that the removal
counts (and the "which filter emptied the dataset" error) are attributable."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator, Sequence

from components.data.config import FilterConfig
from components.data.normalize import whitespace_tokens

Verify = Callable[[str, str, dict], bool]
Row = dict[str, Any]

LATIN_MAX = 0x024F
PREFIX_CHARS_PER_TOKEN = 32  # generous: real tokenizers average 3-5 characters a token  # Basic Latin, Latin-1 Supplement, Latin Extended-A and -B


def charset_ok(text: str, charset: str) -> bool:
    """'ascii': code points < 128; 'latin': Latin script blocks up to U+024F; 'any': everything."""
    if charset == "ascii":
        return text.isascii()
    if charset == "latin":
        return all(ord(c) <= LATIN_MAX for c in text)
    return True


def _verified(verify: Verify, row: Row) -> tuple[bool, str]:
    try:
        return bool(verify(row["task"], row["answer"], json.loads(row["meta"]))), ""
    except Exception as e:  # noqa: BLE001 - a checker that crashes cannot vouch for the answer
        return False, f"verify raised {type(e).__name__}: {e}"


def filter_passes(
    cfg: FilterConfig, *, verify: Verify | None, count_tokens: Callable[[str], int] | None,
) -> Iterator[tuple[str, Callable[[Row], tuple[bool, str]]]]:
    """(metric name, keep-predicate returning (keep, detail)) in the order they are applied."""
    if verify is not None:
        yield "unverifiable", lambda r: _verified(verify, r)
    counter = count_tokens or whitespace_tokens
    cache: dict[str, int] = {}  # prompt -> token count: a real tokenizer is the slow part
    # A prompt far longer than the limit is counted on a prefix only: a 50 MB row costs what a
    # (max_prompt_tokens + 2) * PREFIX_CHARS_PER_TOKEN-character one does.
    prefix = (cfg.max_prompt_tokens + 2) * PREFIX_CHARS_PER_TOKEN

    def count(prompt: str) -> int:
        if prompt not in cache:
            n = int(counter(prompt[:prefix])) if len(prompt) > prefix else -1
            # Tokens of a prefix are at most one more than the whole text's (the cut may split one).
            cache[prompt] = n if n > cfg.max_prompt_tokens + 1 else int(counter(prompt))
        return cache[prompt]

    yield "too_long", lambda r: _tokens_ok(count, r, hi=cfg.max_prompt_tokens)
    yield "too_short", lambda r: _tokens_ok(count, r, lo=cfg.min_prompt_tokens)
    if cfg.charset != "any":
        yield "charset", lambda r: (
            all(charset_ok(t, cfg.charset) for t in (r["prompt"], r["answer"], r["system"] or "")),
            f"not {cfg.charset}",
        )


def _tokens_ok(count: Callable[[str], int], row: Row, *, lo: int | None = None, hi: int | None = None) -> tuple[bool, str]:
    n = count(row["prompt"])
    ok = (lo is None or n >= lo) and (hi is None or n <= hi)
    return ok, f"{n} prompt tokens"


def split_by(rows: Sequence[Row], keep: Callable[[Row], tuple[bool, str]]) -> tuple[list[Row], list[tuple[Row, str]]]:
    """(kept, removed with detail), both in input order."""
    kept, removed = [], []
    for row in rows:
        ok, detail = keep(row)
        if ok:
            kept.append(row)
        else:
            removed.append((row, detail))
    return kept, removed
