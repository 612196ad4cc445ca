"""Promise: the numeric reward credits an answer only when it equals the reference as a number.

Exponents and thousands separators are read one consistent way; "1e309" is 10^309 (never 309);
no inf or nan can be credited. Expectations are derived with Python's own exact arithmetic
(``fractions.Fraction``), not copied from the reward's output.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from components.rewards import NumericConfig, get_reward

# (written answer, its value as exact arithmetic reads it)
WRITTEN = [
    ("1e309", Fraction(10) ** 309),
    ("2.5e3", Fraction(25, 10) * 10**3),
    ("7.5E-1", Fraction(75, 100)),
    ("1,234,567", Fraction(1234567)),
    ("1,000.50", Fraction(100050, 100)),
    ("12e0", Fraction(12)),
]


@pytest.mark.parametrize("text,value", WRITTEN, ids=[w for w, _ in WRITTEN])
def test_written_numbers_are_read_as_their_value(text, value):
    fn = get_reward("numeric")
    # The same text is credited against every other spelling of its value, and only those.
    for ref in (str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}",
                text):
        assert fn(f"Answer: {text}", ref).score == 1.0
    digits_only = "".join(c for c in text.split("e")[0].split("E")[0] if c.isdigit())
    if Fraction(digits_only) != value:  # e.g. "1e309" must not read as 1 or 309
        assert fn(f"Answer: {text}", digits_only).score == 0.0
    exponent = text.lower().split("e")[1] if "e" in text.lower() else None
    if exponent is not None and Fraction(exponent) != value:
        assert fn(f"Answer: {text}", exponent).score == 0.0


def test_1e309_is_never_309():
    fn = get_reward("numeric")
    for completion in ("1e309", "Answer: 1e309", "\\boxed{1e309}", "the result is 1e309"):
        res = fn(completion, "309")
        assert res.score == 0.0, completion
    assert fn("Answer: 309", "309").score == 1.0


def test_thousands_separators_have_one_reading():
    fn = get_reward("numeric")
    # Well-formed groups are one number whichever rule extracts it (boxed, answer line, last number).
    for template in ("\\boxed{%s}", "Answer: %s", "so it is %s"):
        assert fn(template % "1,234", str(1234)).score == 1.0
        assert fn(template % "1,234,567", str(1234567)).score == 1.0
    # Malformed groups are not a thousands number: "1234,567" never equals 1234567, and "1,2345"
    # never equals 12345 (they read as lists of numbers).
    for written, glued in (("1234,567", 1234567), ("1,2345", 12345), ("12,34", 1234)):
        for template in ("\\boxed{%s}", "Answer: %s", "so it is %s"):
            assert fn(template % written, str(glued)).score == 0.0, (template, written)


def test_credited_only_when_equal_as_a_number():
    fn = get_reward("numeric")
    big = 10**500
    assert fn(f"Answer: {big + 1}", str(big)).score == 0.0
    assert fn(f"Answer: {big}", str(big)).score == 1.0
    tiny_off = Fraction(42) + Fraction(1, 10**7)
    assert fn(f"Answer: {float(tiny_off)!r}", "42").score == 0.0
    for same in ("3/4", "0.75", "7.5e-1", "75e-2"):
        assert fn(f"Answer: {same}", "0.75").score == 1.0
    for non_number in ("inf", "nan", "Infinity", "-inf", "1e99999999"):
        res = fn(f"Answer: {non_number}", "1")
        assert res.score == 0.0
        assert fn(f"Answer: {non_number}", non_number).score == 0.0


def test_tolerances_must_be_finite():
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError):
            NumericConfig(rel_tol=bad)
        with pytest.raises(ValueError):
            NumericConfig(abs_tol=bad)
