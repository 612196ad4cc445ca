"""Text normalisation, canonical answers and stable row ids.

Every later stage (dedup, decontamination, digests) compares normalised text, so this module
is the single definition of "the same prompt".
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_WS = re.compile(r"\s{2,}|[^\S ]")  # runs of whitespace, or one that is not a plain space
_ASCII_WS_NOT_SPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f"
_THOUSANDS = re.compile(r"^([-+]?)(\d{1,3}(?:,\d{3})+)(\.\d+)?$")
_TRAILING_ZERO = re.compile(r"^([-+]?\d+)\.0+$")
_WORD = re.compile(r"\w+|[^\w\s]")


def normalize_text(text: str) -> str:
    """NFKC (folds full-width digits, ligatures, non-breaking spaces), then collapse whitespace
    (``_WS`` leaves single spaces alone: on ordinary text it replaces next to nothing, so a
    50 MB prompt costs one scan, not millions of substitutions)."""
    text = unicodedata.normalize("NFKC", text)
    if text.isascii() and "  " not in text and not any(c in text for c in _ASCII_WS_NOT_SPACE):
        return text.strip(" ")  # fast path: nothing to collapse (a few C-speed scans)
    return _WS.sub(" ", text).strip()


def prompt_id(prompt: str) -> str:
    """Stable id: first 16 hex chars of sha256 of the normalised prompt."""
    return hashlib.sha256(normalize_text(prompt).encode("utf-8")).hexdigest()[:16]


def _unbox(text: str) -> str:
    """Replace each `\\boxed{...}` (balanced braces) by its content."""
    key = "\\boxed{"
    while (start := text.find(key)) != -1:
        depth, i = 1, start + len(key)
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth:  # unbalanced: drop the marker, keep the rest
            return text[:start] + text[start + len(key):]
        text = text[:start] + text[start + len(key): i - 1] + text[i:]
    return text


def canonical_answer(answer: str) -> str:
    """Answer as reward functions compare it: no \\boxed{}, `$`, thousands separators, `.0`."""
    text = normalize_text(_unbox(normalize_text(answer)).replace("$", ""))
    if m := _THOUSANDS.match(text):
        text = m.group(1) + m.group(2).replace(",", "") + (m.group(3) or "")
    if m := _TRAILING_ZERO.match(text):
        text = m.group(1)
    if text.startswith("+") and text[1:].isdigit():
        text = text[1:]
    return text


def word_tokens(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks: the unit of decontamination n-grams."""
    return _WORD.findall(text.lower())


def whitespace_tokens(text: str) -> int:
    """Fallback token count when no tokenizer is given."""
    return len(text.split())
