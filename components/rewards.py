"""Verifiable reward functions: a registry of answer checkers that never raise and never hang.

Rewards run on untrusted model output inside the training loop, so every one of them:
- scans at most the last ``max_chars`` characters (a 1 MB completion costs the same as a short one),
- refuses numbers longer than ``max_digits`` digits (Python's ``int`` would refuse past 4300 digits
  anyway, and big rationals are slow),
- uses only linear-time regexes (no nested quantifiers that can backtrack catastrophically),
- is called through :func:`safe_call`, which turns any exception into ``score=0, error="exception"``
  and any call slower than ``time_limit_s`` into ``score=0, error="timeout"``. The time limit is
  measured, not interrupted: bounded inputs are what keeps a call short; the measurement catches and
  counts the cases we did not foresee.

``RewardResult.error`` vocabulary: ``None`` (scored), ``"unparseable"`` (no answer could be read from
the completion), ``"invalid"`` (an answer was read but breaks the task's rules, e.g. a countdown
expression that reuses a number or calls a function), ``"exception"``, ``"timeout"``.
Module-level :data:`ERROR_COUNTS` accumulates these across calls; :func:`score_batch` returns
per-batch counts too.

``version`` strings enter cache keys: bump one whenever that reward's semantics change.
"""

from __future__ import annotations

import ast
import re
import threading
import time
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, ClassVar, Sequence

from pydantic import BaseModel, ConfigDict, Field

# --------------------------------------------------------------------------------------------
# Results, error accounting, safe calls
# --------------------------------------------------------------------------------------------


@dataclass
class RewardResult:
    """One scored completion: total ``score``, named sub-scores in ``parts``, and an error kind."""

    score: float
    parts: dict[str, float] = field(default_factory=dict)
    error: str | None = None


ERROR_KINDS = ("unparseable", "invalid", "exception", "timeout")
ERROR_COUNTS: Counter[str] = Counter()
_COUNT_LOCK = threading.Lock()


def error_counts() -> dict[str, int]:
    """Snapshot of the process-wide error counts (so a caller can log deltas)."""
    with _COUNT_LOCK:
        return dict(ERROR_COUNTS)


def reset_error_counts() -> None:
    with _COUNT_LOCK:
        ERROR_COUNTS.clear()


def _count(error: str | None) -> None:
    if error is not None:
        with _COUNT_LOCK:
            ERROR_COUNTS[error] += 1


def safe_call(
    fn: Callable[[str, str, dict | None], RewardResult],
    completion: Any,
    answer: Any,
    meta: dict | None = None,
    time_limit_s: float = 1.0,
) -> RewardResult:
    """Call a raw scoring function so that it cannot raise and a slow call scores 0 ("timeout").

    Non-string inputs (``None``, ints from a dataset) are coerced to strings first.
    """
    start = time.perf_counter()
    try:
        completion = "" if completion is None else str(completion)
        answer = "" if answer is None else str(answer)
        result = fn(completion, answer, meta)
        if not isinstance(result, RewardResult):
            raise TypeError(f"reward returned {type(result).__name__}, not RewardResult")
        result = RewardResult(float(result.score), dict(result.parts), result.error)
    except Exception:  # noqa: BLE001 - a reward must never take the training loop down
        result = RewardResult(0.0, {}, "exception")
    if time.perf_counter() - start > time_limit_s:
        result = RewardResult(0.0, result.parts, "timeout")
    _count(result.error)
    return result


# --------------------------------------------------------------------------------------------
# Text helpers (all linear time on capped input)
# --------------------------------------------------------------------------------------------

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


def _find_last_boxed(text: str) -> str | None:
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


_ANSWER_RE = re.compile(r"answer[ \t*]*[:\uff1a]", re.IGNORECASE)


def _last_match(regex: re.Pattern[str], text: str) -> re.Match[str] | None:
    """The last match of ``regex`` in ``text`` (the final answer wins over earlier drafts)."""
    last = None
    for last in regex.finditer(text):  # noqa: B007 - the loop keeps the last match
        pass
    return last


def _after_last_answer_marker(text: str) -> str | None:
    """Rest of the line after the last ``Answer:`` (tolerates markdown ``**Answer:**``)."""
    last = _last_match(_ANSWER_RE, text)
    if last is None:
        return None
    rest = text[last.end():]
    nl = rest.find("\n")
    return rest if nl < 0 else rest[:nl]


def extract_final_answer(text: str) -> str | None:
    """The model's stated final answer: last ``\\boxed{}`` content, else the ``Answer:`` line."""
    boxed = _find_last_boxed(text)
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


def _clean_latex(text: str) -> str:
    text = _FRAC_RE.sub(r"\1/\2", text)
    return _LATEX_DROP_RE.sub("", text)


def extract_number(text: str, max_digits: int = 1000) -> tuple[Fraction | None, str]:
    """Model's numeric answer: ``\\boxed{}`` first, else ``Answer: X``, else the last number.

    Returns (value or None, which rule fired: "boxed" / "answer_line" / "last_number" / "none").
    """
    boxed = _find_last_boxed(text)
    if boxed is not None:
        nums = _numbers(_clean_latex(boxed))
        if nums:
            return parse_number(nums[-1], max_digits), "boxed"
    after = _after_last_answer_marker(text)
    if after is not None:
        nums = _numbers(_clean_latex(after))
        if nums:
            return parse_number(nums[0], max_digits), "answer_line"
    nums = _numbers(text)
    if nums:
        return parse_number(nums[-1], max_digits), "last_number"
    return None, "none"


def format_fraction(value: Fraction) -> str:
    """Canonical text of an exact number: ``42``, ``-3/4``."""
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


# --------------------------------------------------------------------------------------------
# Reward base class and configs
# --------------------------------------------------------------------------------------------


class RewardConfig(BaseModel):
    """Options shared by every reward; subclasses add their own (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")
    max_chars: int = Field(4096, gt=0, description="only the tail of a completion is scanned")
    time_limit_s: float = Field(1.0, gt=0, description="calls slower than this score 0 (timeout)")


class RewardFn(ABC):
    """A verifiable reward. Call it; it returns a :class:`RewardResult` and never raises."""

    name: ClassVar[str]
    version: ClassVar[str]
    Config: ClassVar[type[RewardConfig]] = RewardConfig

    def __init__(self, config: RewardConfig | dict | None = None) -> None:
        if config is None:
            config = self.Config()
        elif isinstance(config, dict):
            config = self.Config(**config)
        self.config = config

    def __call__(self, completion: str, answer: str, meta: dict | None = None) -> RewardResult:
        return safe_call(self._score, completion, answer, meta, self.config.time_limit_s)

    @abstractmethod
    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        """The raw check; may raise (``__call__`` wraps it)."""

    def canonical_answer(self, answer: str) -> str | None:
        """Normalised reference answer, or None when this reward cannot read it."""
        text = str(answer).strip()
        return text or None

    def can_verify(self, answer: str, meta: dict | None = None) -> bool:
        """Whether this reward can check completions against ``answer`` (used to drop rows)."""
        try:
            return self.canonical_answer(answer) is not None
        except Exception:  # noqa: BLE001
            return False

    def spec(self) -> dict[str, Any]:
        """Name, version and options: what a cache key needs to know about this reward."""
        return {"name": self.name, "version": self.version, **self.config.model_dump()}

    def _text(self, completion: str) -> str:
        return normalize_text(tail(completion, self.config.max_chars))


# --------------------------------------------------------------------------------------------
# Concrete rewards
# --------------------------------------------------------------------------------------------


class NumericConfig(RewardConfig):
    rel_tol: float = Field(0.0, ge=0, allow_inf_nan=False,
                           description="credit |answer - ref| <= abs_tol + rel_tol * |ref| (default: equal)")
    abs_tol: float = Field(0.0, ge=0, allow_inf_nan=False)
    max_digits: int = Field(1000, gt=0, description="longer numbers (digits or exponent) are unreadable")


class NumericReward(RewardFn):
    """1.0 when the model's number equals the reference as a number (``0.75`` = ``3/4`` =
    ``7.5e-1``); ``abs_tol``/``rel_tol`` (finite, 0 by default) widen that on request.

    Comparison is on exact rationals, so 1000-digit integers and exponents compare without float
    overflow: there is no inf or nan, and "1e309" is 10^309, never 309. A reference like
    ``"#### 72"`` (GSM8K) is read after the ``####``.
    """

    name = "numeric"
    version = "2"  # 2: exponents, one thousands-separator rule, exact equality by default
    Config = NumericConfig
    config: NumericConfig

    def _reference(self, answer: str) -> Fraction | None:
        text = normalize_text(tail(str(answer), self.config.max_chars))
        if "####" in text:
            text = text.rsplit("####", 1)[1]
        value, _ = extract_number(text, self.config.max_digits)
        return value

    def canonical_answer(self, answer: str) -> str | None:
        value = self._reference(answer)
        return None if value is None else format_fraction(value)

    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        ref = self._reference(answer)
        if ref is None:
            return RewardResult(0.0, {}, "invalid")  # reference unreadable: curation should drop it
        pred, rule = extract_number(self._text(completion), self.config.max_digits)
        if pred is None:
            return RewardResult(0.0, {"found": 0.0}, "unparseable")
        tol = Fraction(self.config.abs_tol) + Fraction(self.config.rel_tol) * abs(ref)
        ok = abs(pred - ref) <= tol
        return RewardResult(float(ok), {"found": 1.0, "boxed": float(rule == "boxed")})


class ExactReward(RewardFn):
    """1.0 when the stated final answer (boxed, else ``Answer:`` line, else the whole stripped
    completion) equals the stripped reference character for character. No normalisation at all."""

    name = "exact"
    version = "1"

    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        ref = answer.strip()
        if not ref:
            return RewardResult(0.0, {}, "invalid")
        stated = extract_final_answer(tail(completion, self.config.max_chars))
        pred = (stated if stated is not None else completion).strip()
        return RewardResult(float(pred == ref), {"marked": float(stated is not None)})


_WS_RE = re.compile(r"\s+")


def normalize_string(text: str) -> str:
    """NFKC, casefold, drop Unicode punctuation, collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return _WS_RE.sub(" ", text).strip()


class NormalizedStringReward(RewardFn):
    """Like ``exact`` but both sides pass through :func:`normalize_string` first
    (so "Paris." == "paris" and "U.S.A" == "usa")."""

    name = "normalized_string"
    version = "1"

    def canonical_answer(self, answer: str) -> str | None:
        return normalize_string(tail(str(answer), self.config.max_chars)) or None

    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        ref = self.canonical_answer(answer)
        if ref is None:
            return RewardResult(0.0, {}, "invalid")
        text = tail(completion, self.config.max_chars)
        stated = extract_final_answer(text)
        pred = normalize_string(stated if stated is not None else text)
        if not pred:
            return RewardResult(0.0, {"marked": 0.0}, "unparseable")
        return RewardResult(float(pred == ref), {"marked": float(stated is not None)})


class MultipleChoiceConfig(RewardConfig):
    letters: str = Field("ABCDE", min_length=2, pattern=r"^[A-Z]+$")


class MultipleChoiceReward(RewardFn):
    """1.0 when the chosen letter equals the reference letter.

    The letter is read, in order, from: ``\\boxed{B}``; the last ``Answer: B`` / ``answer is (B)``;
    the last ``(B)`` / ``[B]``; a completion that is just ``B`` / ``B.`` / ``(B)``. Letters must be
    upper case (so the article "a" is not read as choice A).
    """

    name = "multiple_choice"
    version = "1"
    Config = MultipleChoiceConfig
    config: MultipleChoiceConfig

    def __init__(self, config: RewardConfig | dict | None = None) -> None:
        super().__init__(config)
        L = re.escape(self.config.letters)
        # One run of blanks before and one after the optional colon, never two adjacent
        # runs of the same class (that would backtrack quadratically on a long blank run).
        self._answer_re = re.compile(
            r"(?i:answer)(?:[ \t]+(?i:is))?[ \t*]*(?:[:\uff1a][ \t*]*)?[(\[]?([" + L + r"])(?![A-Za-z])"
        )
        self._paren_re = re.compile(r"[(\[]([" + L + r"])[)\]]")
        self._alone_re = re.compile(r"[(\[]?([" + L + r"])[)\].:]?")

    def _letter(self, text: str) -> str | None:
        boxed = _find_last_boxed(text)
        if boxed is not None:
            m = self._alone_re.fullmatch(_clean_latex(boxed).replace("}", "").strip())
            if m:
                return m.group(1)
        for regex in (self._answer_re, self._paren_re):
            last = _last_match(regex, text)
            if last is not None:
                return last.group(1)
        m = self._alone_re.fullmatch(text.strip())
        return m.group(1) if m else None

    def canonical_answer(self, answer: str) -> str | None:
        text = normalize_text(str(answer)).strip()
        if len(text) > 8:
            return None
        m = self._alone_re.fullmatch(text.upper())
        return m.group(1) if m else None

    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        ref = self.canonical_answer(answer)
        if ref is None:
            return RewardResult(0.0, {}, "invalid")
        pred = self._letter(self._text(completion))
        if pred is None:
            return RewardResult(0.0, {"found": 0.0}, "unparseable")
        return RewardResult(float(pred == ref), {"found": 1.0})


class CountdownConfig(RewardConfig):
    max_value: float = Field(1e12, gt=0, description="reject any intermediate value above this")
    max_expr_chars: int = Field(512, gt=0)
    require_all: bool = Field(False, description="every given number must be used")


class _RuleViolation(Exception):
    """The expression breaks the countdown rules (scored 0, error='invalid')."""


_ARITH_RUN_RE = re.compile(r"[\d()+\-*/ \t.]+")
_OPS_MAP = str.maketrans({"\u00d7": "*", "\u00f7": "/", "\u22c5": "*", "\u00b7": "*"})


class CountdownReward(RewardFn):
    """Countdown: reach ``meta["target"]`` from ``meta["numbers"]`` with + - * / and parentheses.

    The expression is the last ``<answer>...</answer>`` content, else the last non-empty line; a
    trailing ``= 50`` is dropped. It is parsed with :mod:`ast` and evaluated by a whitelist walker
    over exact rationals (never ``eval``): only integer literals, binary + - * /, unary minus; each
    given number used at most as often as it is given; any intermediate value above ``max_value``
    in magnitude, or a division by zero, makes it invalid. Score 1.0 iff the value equals the
    target exactly. A Python-invalid candidate line falls back to its longest arithmetic run.
    """

    name = "countdown"
    version = "1"
    Config = CountdownConfig
    config: CountdownConfig

    # -- reference -------------------------------------------------------------------------
    def _target(self, answer: str, meta: dict | None) -> int | None:
        raw = (meta or {}).get("target", answer)
        try:
            value = Fraction(str(raw).strip())
        except (ValueError, ZeroDivisionError):
            return None
        return int(value) if value.denominator == 1 and abs(value) <= self.config.max_value else None

    def canonical_answer(self, answer: str) -> str | None:
        target = self._target(answer, None)
        return None if target is None else str(target)

    def can_verify(self, answer: str, meta: dict | None = None) -> bool:
        try:
            return self._target(answer, meta) is not None and bool(self._numbers(meta))
        except Exception:  # noqa: BLE001
            return False

    def _numbers(self, meta: dict | None) -> list[int]:
        nums = (meta or {}).get("numbers")
        if not nums:
            raise ValueError("countdown needs meta['numbers']")
        out = [int(n) for n in nums]
        if len(out) > 64 or any(abs(n) > self.config.max_value for n in out):
            raise ValueError("countdown numbers out of range")
        return out

    # -- completion ------------------------------------------------------------------------
    def _candidate(self, text: str) -> str | None:
        end = text.rfind("</answer>")
        if end >= 0:
            start = text.rfind("<answer>", 0, end)
            if start >= 0:
                return text[start + len("<answer>"): end]
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return lines[-1] if lines else None

    def _evaluate(self, expr: str, numbers: list[int]) -> tuple[Fraction, int]:
        """Value of ``expr`` and how many numbers it used; raises _RuleViolation / SyntaxError."""
        tree = ast.parse(expr.strip(), mode="eval")
        literals = [n for n in ast.walk(tree) if isinstance(n, ast.Constant)]
        if len(literals) > len(numbers):
            raise _RuleViolation("more literals than numbers")
        pool = Counter(numbers)
        limit = self.config.max_value

        def check(v: Fraction) -> Fraction:
            if abs(v) > limit:
                raise _RuleViolation("intermediate value too large")
            return v

        def walk(node: ast.AST) -> Fraction:
            if isinstance(node, ast.Expression):
                return walk(node.body)
            if isinstance(node, ast.Constant):
                v = node.value
                if type(v) is not int:  # bool, float, str, complex all refused
                    raise _RuleViolation("only integer literals")
                if pool[v] <= 0:
                    raise _RuleViolation(f"number {v} not available")
                pool[v] -= 1
                return check(Fraction(v))
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
                return check(-walk(node.operand))
            if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
                a, b = walk(node.left), walk(node.right)
                if isinstance(node.op, ast.Add):
                    return check(a + b)
                if isinstance(node.op, ast.Sub):
                    return check(a - b)
                if isinstance(node.op, ast.Mult):
                    return check(a * b)
                if b == 0:
                    raise _RuleViolation("division by zero")
                return check(a / b)
            raise _RuleViolation(f"{type(node).__name__} not allowed")

        value = walk(tree)
        return value, len(numbers) - sum(pool.values())

    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        target = self._target(answer, meta)
        try:
            numbers = self._numbers(meta)
        except (ValueError, TypeError):
            numbers = None
        if target is None or numbers is None:
            return RewardResult(0.0, {}, "invalid")
        text = self._text(completion).translate(_OPS_MAP)
        text = text.replace("\\times", "*").replace("\\cdot", "*").replace("\\div", "/")
        cand = self._candidate(text)
        if cand is None:
            return RewardResult(0.0, {"valid": 0.0}, "unparseable")
        sides = [s for s in cand.split("=") if s.strip()]
        if not sides:
            return RewardResult(0.0, {"valid": 0.0}, "unparseable")
        # Prefer the side that is an expression (has an operator) over a bare "50".
        with_op = [s for s in sides if any(op in s for op in "+-*/")]
        expr = (with_op or sides)[0].strip().rstrip(".")
        if len(expr) > self.config.max_expr_chars:
            return RewardResult(0.0, {"valid": 0.0}, "unparseable")
        try:
            try:
                value, used = self._evaluate(expr, numbers)
            except SyntaxError:
                runs = [r.strip() for r in _ARITH_RUN_RE.findall(expr) if any(c.isdigit() for c in r)]
                if not runs:
                    raise
                value, used = self._evaluate(max(runs, key=len), numbers)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return RewardResult(0.0, {"valid": 0.0}, "unparseable")
        except _RuleViolation:
            return RewardResult(0.0, {"valid": 0.0}, "invalid")
        if self.config.require_all and used != len(numbers):
            return RewardResult(0.0, {"valid": 0.0, "used": float(used)}, "invalid")
        return RewardResult(float(value == target), {"valid": 1.0, "used": float(used)})


class FormatConfig(RewardConfig):
    max_len: int = Field(2048, gt=0, description="completions longer than this are not 'short'")
    trailing_chars: int = Field(64, ge=0, description="non-space text allowed after the answer")


_ANSWER_TAG_RE = re.compile(r"<answer>[^<]{1,512}</answer>")


class FormatReward(RewardFn):
    """Format reward, independent of correctness (``answer`` is ignored).

    ``score = has_answer * at_end * short`` (each 0/1, reported in ``parts``):
    - has_answer: an explicit, non-empty final answer exists: ``\\boxed{...}``, an ``Answer: ...``
      line, or ``<answer>...</answer>``;
    - at_end: at most ``trailing_chars`` non-space characters follow that answer;
    - short: the whole completion has at most ``max_len`` characters.
    """

    name = "format"
    version = "1"
    Config = FormatConfig
    config: FormatConfig

    def can_verify(self, answer: str, meta: dict | None = None) -> bool:
        return True

    def canonical_answer(self, answer: str) -> str | None:
        return str(answer).strip()

    def _answer_end(self, text: str) -> int | None:
        """Index just after the last explicit final answer in ``text``, or None."""
        ends: list[int] = []
        start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
        if start >= 0:
            content = _find_last_boxed(text)
            if content is not None and content.strip():
                ends.append(text.index("{", start) + 1 + len(content) + 1)
        last = _last_match(_ANSWER_RE, text)
        if last is not None:
            rest = text[last.end():]
            nl = rest.find("\n")
            line = rest if nl < 0 else rest[:nl]
            if line.strip():
                ends.append(last.end() + len(line))
        tag = _last_match(_ANSWER_TAG_RE, text)
        if tag is not None and tag.group(0)[8:-9].strip():
            ends.append(tag.end())
        return max(ends) if ends else None

    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        short = len(completion) <= self.config.max_len
        text = tail(completion, self.config.max_chars)
        end = self._answer_end(text)
        has = end is not None
        at_end = has and len("".join(text[end:].split())) <= self.config.trailing_chars
        parts = {"has_answer": float(has), "at_end": float(at_end), "short": float(short)}
        return RewardResult(float(has and at_end and short), parts)


class CompositeConfig(RewardConfig):
    components: list[dict[str, Any] | str] = Field(
        min_length=1,
        description='e.g. [{"name": "numeric", "weight": 1.0}, {"name": "format", "weight": 0.1}]',
    )


class CompositeReward(RewardFn):
    """Weighted sum of other rewards. ``parts`` holds each component's score under its name
    (``name#i`` when a name repeats); ``error`` is the first component error, in order.
    Each component runs through its own :func:`safe_call`, so one failing part does not zero the rest.
    """

    name = "composite"
    Config = CompositeConfig
    config: CompositeConfig

    def __init__(self, config: RewardConfig | dict | None = None) -> None:
        super().__init__(config)
        self.children: list[tuple[str, float, RewardFn]] = []
        seen: Counter[str] = Counter()
        for i, comp in enumerate(self.config.components):
            spec = {"name": comp} if isinstance(comp, str) else dict(comp)
            weight = float(spec.pop("weight", 1.0))
            child = get_reward(spec)
            seen[child.name] += 1
            key = child.name if seen[child.name] == 1 else f"{child.name}#{i}"
            self.children.append((key, weight, child))

    @property
    def version(self) -> str:  # type: ignore[override]
        """Changes whenever any component's version changes (cache keys follow)."""
        return "1(" + ",".join(f"{c.name}:{c.version}" for _, _, c in self.children) + ")"

    def spec(self) -> dict[str, Any]:
        options = self.config.model_dump(exclude={"components"})
        children = [{"weight": w, **c.spec()} for _, w, c in self.children]
        return {"name": self.name, "version": self.version, **options, "components": children}

    def canonical_answer(self, answer: str) -> str | None:
        return self.children[0][2].canonical_answer(answer)

    def can_verify(self, answer: str, meta: dict | None = None) -> bool:
        return all(c.can_verify(answer, meta) for _, w, c in self.children if w != 0)

    def _score(self, completion: str, answer: str, meta: dict | None) -> RewardResult:
        total, parts, error = 0.0, {}, None
        for key, weight, child in self.children:
            res = child(completion, answer, meta)
            parts[key] = res.score
            total += weight * res.score
            if error is None and res.error is not None:
                error = res.error
        return RewardResult(total, parts, error)


# --------------------------------------------------------------------------------------------
# Registry and batch scoring
# --------------------------------------------------------------------------------------------

REWARDS: dict[str, type[RewardFn]] = {
    cls.name: cls
    for cls in (
        NumericReward,
        ExactReward,
        NormalizedStringReward,
        MultipleChoiceReward,
        CountdownReward,
        FormatReward,
        CompositeReward,
    )
}


def get_reward(spec: str | dict[str, Any]) -> RewardFn:
    """Build a reward from ``"numeric"`` or ``{"name": "numeric", "rel_tol": 1e-4}``.

    Unknown names and unknown options raise ``ValueError`` naming the allowed values.
    """
    if isinstance(spec, str):
        name, options = spec, {}
    else:
        options = dict(spec)
        name = options.pop("name", None)
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; allowed: {sorted(REWARDS)}")
    options.pop("version", None)  # present in specs written by RewardFn.spec()
    return REWARDS[name](REWARDS[name].Config(**options))


def score_batch(
    fn: RewardFn | Callable[[str, str, dict | None], RewardResult],
    completions: Sequence[str],
    answers: Sequence[str],
    metas: Sequence[dict | None] | None = None,
) -> tuple[list[RewardResult], dict[str, int]]:
    """Score aligned lists; also return error counts (every kind in ERROR_KINDS, zero if unseen).

    A plain callable (not a RewardFn) is wrapped in :func:`safe_call` too.
    """
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
    if metas is None:
        metas = [None] * len(completions)
    if len(metas) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(metas)} metas")
    results = []
    for c, a, m in zip(completions, answers, metas):
        if isinstance(fn, RewardFn):
            results.append(fn(c, a, m))
        else:
            results.append(safe_call(fn, c, a, m))
    counts = {kind: 0 for kind in ERROR_KINDS}
    for r in results:
        if r.error is not None:
            counts[r.error] = counts.get(r.error, 0) + 1
    return results, counts
