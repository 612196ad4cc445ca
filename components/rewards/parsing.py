"""Reading answers out of untrusted completions: text normalisation, the stated final answer,
exact numbers. Every helper is linear time on capped input (no regex that can backtrack
catastrophically), and none raises on odd text."""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

# Characters NFKC leaves alone but that people write in numbers.
_EXTRA_MAP = str.maketrans({"\u2212": "-", "\u2013": "-", "\u066b": ".", "\u066c": ",", "\u00a0": " "})


def tail(text: str, max_chars: int) -> str:
    """Last ``max_chars`` characters, dropping a token cut in half by the cut.

    Without the drop, the tail of a 5000-digit number would read as a shorter (wrong) number.
    """
    if len(text) <= max_chars:
        return text
    cut = len(text) - max_chars
    if not text[cut - 1].isspace():
        # Skip the partial token (bounded by max_chars).
        while cut < len(text) and not text[cut].isspace():
            cut += 1
    return text[cut:]


def normalize_text(text: str) -> str:
    """NFKC (fullwidth digits/letters to ASCII), common minus/separator forms, and any Unicode
    decimal digit (Arabic-Indic, Devanagari, ...) to its ASCII digit."""
    text = unicodedata.normalize("NFKC", text).translate(_EXTRA_MAP)
    if text.isascii():
        return text
    return "".join(
        str(unicodedata.decimal(ch)) if (not ch.isascii() and ch.isdecimal()) else ch for ch in text
    )


def find_last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces, or None."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None  # unclosed box


ANSWER_RE = re.compile(r"answer[ \t*]*[:\uff1a]", re.IGNORECASE)


def last_match(regex: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The last match of ``regex`` in ``text`` (the final answer wins over earlier drafts)."""
    last = None
    for last in regex.finditer(text):  # noqa: B007 - the loop keeps the last match
        pass
    return last


def _after_last_answer_marker(text: str) -> str | None:
    """Rest of the line after the last ``Answer:`` (tolerates markdown ``**Answer:**``)."""
    last = last_match(ANSWER_RE, text)
    if last is None:
        return None
    rest = text[last.end():]
    nl = rest.find("\n")
    return rest if nl < 0 else rest[:nl]


def extract_final_answer(text: str) -> str | None:
    """The model's stated final answer: last ``\\boxed{}`` content, else the ``Answer:`` line."""
    boxed = find_last_boxed(text)
    if boxed is not None:
        return boxed
    after = _after_last_answer_marker(text)
    if after is not None and after.strip():
        return after
    return None


# A number: optional minus (only when not a binary minus after a word/closing bracket), an
# integer part, optional decimals, optional exponent ("1e309", "2.5E-3"), optional "/ denominator".
# Thousands separators are read one way only: a leading group of 1-3 digits, then ",ddd" groups,
# none running into more digits ("1,234,567"); anything else is a list ("1234,567" is 1234 then
# 567, "1,2345" is 1 then 2345). Every repeat is separated by a literal, so matching is linear.
_NUM_RE = re.compile(
    r"(?:(?<![\w)\]}])-)?(?:\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?"
    r"(?:[ \t]*/[ \t]*\d+(?:\.\d+)?)?"
)
_EXP_RE = re.compile(r"[eE]([-+]?\d+)")
_FRAC_RE = re.compile(r"\\[dt]?frac\{[ ]*(-?[\d.,]+)[ ]*\}\{[ ]*([\d.,]+)[ ]*\}")
_LATEX_DROP_RE = re.compile(r"\\(?:left|right|!|,|;|:| |\$|%)|\\text\{|\\mathrm\{|[$%]")


def parse_number(token: str, max_digits: int = 1000) -> Fraction | None:
    """Exact value of one matched number token (``-1,234.5``, ``3/4``), or None."""
    token = token.replace(",", "").replace(" ", "").replace("\t", "")
    if sum(c.isdigit() for c in token) > max_digits:
        return None
    exp = _EXP_RE.search(token)
    magnitude = exp.group(1).lstrip("+-").lstrip("0") if exp is not None else ""
    if len(magnitude) > 7 or int(magnitude or 0) > max_digits:
        return None  # 1e999999999 would be a 10^9-digit integer: as unreadable as a 2000-digit one
    num, _, den = token.partition("/")
    try:
        value = Fraction(num)
        if den:
            d = Fraction(den)
            if d == 0:
                return None
            value /= d
    except (ValueError, ZeroDivisionError):
        return None
    return value


def _numbers(text: str) -> list[str]:
    return _NUM_RE.findall(text)


def clean_latex(text: str) -> str:
    """``\\frac{a}{b}`` to ``a/b``; spacing commands, ``\\text{``, ``$`` and ``%`` dropped."""
    text = _FRAC_RE.sub(r"\1/\2", text)
    return _LATEX_DROP_RE.sub("", text)


def extract_number(text: str, max_digits: int = 1000) -> tuple[Fraction | None, str]:
    """Model's numeric answer: ``\\boxed{}`` first, else ``Answer: X``, else the last number.

    Returns (value or None, which rule fired: "boxed" / "answer_line" / "last_number" / "none").
    """
    boxed = find_last_boxed(text)
    if boxed is not None:
        nums = _numbers(clean_latex(boxed))
        if nums:
            return parse_number(nums[-1], max_digits), "boxed"
    after = _after_last_answer_marker(text)
    if after is not None:
        nums = _numbers(clean_latex(after))
        if nums:
            return parse_number(nums[0], max_digits), "answer_line"
    nums = _numbers(text)
    if nums:
        return parse_number(nums[-1], max_digits), "last_number"
    return None, "none"


def format_fraction(value: Fraction) -> str:
    """Canonical text of an exact number: ``42``, ``-3/4``."""
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


_WS_RE = re.compile(r"\s+")


def normalize_string(text: str) -> str:
    """NFKC, casefold, drop Unicode punctuation, collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return _WS_RE.sub(" ", text).strip()


_GSM8K_MARK = "####"
# Math delimiters, closing first: the last complete span wins.
_MATH_SPANS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))


def _rest_of_line(text: str, start: int) -> str:
    nl = text.find("\n", start)
    return text[start:] if nl < 0 else text[start:nl]


def _last_math_span(text: str) -> str | None:
    """Content of the last ``$...$`` / ``$$...$$`` / ``\\(...\\)`` / ``\\[...\\]`` span, or None.

    ``rfind`` from the end for the closer, then for its opener: two linear scans per delimiter.
    """
    best: tuple[int, str] | None = None
    for opener, closer in _MATH_SPANS:
        end = text.rfind(closer)
        if end < 0:
            continue
        start = text.rfind(opener, 0, end)
        if start < 0:
            continue
        content = text[start + len(opener):end]
        if content.strip() and (best is None or end > best[0]):
            best = (end, content)
    return None if best is None else best[1]


def extract_math_answer(text: str) -> tuple[str | None, str]:
    """The final answer of a math completion, as text, and which rule found it.

    In order: the last balanced ``\\boxed{...}`` ("boxed"), the rest of the line after the last
    GSM8K ``####`` ("gsm8k"), the ``Answer:`` line ("answer_line"), the last ``$...$``-style span
    ("math_span"), else the last number ("last_number"); ``(None, "none")`` when nothing is found.
    Linear time: ``rfind`` scans and the linear number regex.
    """
    boxed = find_last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip(), "boxed"
    mark = text.rfind(_GSM8K_MARK)
    if mark >= 0:
        line = _rest_of_line(text, mark + len(_GSM8K_MARK)).strip()
        if line:
            return line, "gsm8k"
    after = _after_last_answer_marker(text)
    if after is not None and after.strip():
        return after.strip().rstrip("."), "answer_line"
    span = _last_math_span(text)
    if span is not None:
        return span.strip(), "math_span"
    nums = _numbers(text)
    if nums:
        return nums[-1], "last_number"
    return None, "none"


_OPENERS, _CLOSERS = "([{", ")]}"


def bracket_depth(text: str) -> int:
    """Deepest nesting of ``( [ {`` in ``text`` (unbalanced closers are ignored); linear."""
    depth = deepest = 0
    for ch in text:
        if ch in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
        elif ch in _CLOSERS and depth:
            depth -= 1
    return deepest
