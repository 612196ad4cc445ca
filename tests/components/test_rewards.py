"""Verifiable rewards: hand-written completions, adversarial ones included."""

import time

import pytest

from components.rewards import REWARDS, RewardFn, RewardResult, get_reward, safe_call

MB = 1_000_000

# (completion, reference, expected score, expected error)
NUMERIC_CASES = [
    ("The total is \\boxed{42}.", "42", 1.0, None),
    ("\\boxed{1,234}", "1234", 1.0, None),
    ("So we get 1,234,567 apples", "1234567", 1.0, None),
    ("Answer: 7", "7", 1.0, None),
    ("**Answer:** $1,000.50 in total", "1000.5", 1.0, None),
    ("The answer is 7. Wait, no, 8.", "8", 1.0, None),  # no "Answer:" marker -> last number
    ("The answer is 7. Wait, no, 8.", "7", 0.0, None),
    ("Answer: 5\nchecking: 2+2=4", "5", 1.0, None),  # marker beats the later last number
    ("\\boxed{3} but Answer: 4 and then 5", "3", 1.0, None),  # boxed beats everything
    ("x = -5", "-5", 1.0, None),
    ("temperature fell to \u22127", "-7", 1.0, None),  # Unicode minus sign
    ("3-5", "5", 1.0, None),  # binary minus is not a sign: the last number is 5
    ("pi is about 3.14159", "3.14159", 1.0, None),
    ("Answer: 3/4", "0.75", 1.0, None),
    ("\\boxed{\\frac{3}{4}}", "3/4", 1.0, None),
    ("\\boxed{-\\dfrac{1}{2}}", "-0.5", 1.0, None),
    ("\u0664\u0662", "42", 1.0, None),  # Arabic-Indic digits
    ("\uff14\uff12", "42", 1.0, None),  # fullwidth digits (NFKC)
    ("\u0968\u0969", "23", 1.0, None),  # Devanagari digits
    ("42.0000001", "42", 0.0, None),  # credited only when equal as a number (tolerance is opt-in)
    ("Answer: 4.2e1", "42", 1.0, None),  # exponent notation is a number like any other
    ("42.001", "42", 0.0, None),
    ("the result is 72", "#### 72", 1.0, None),  # GSM8K-style reference
    ("", "1", 0.0, "unparseable"),
    ("I don't know.", "1", 0.0, "unparseable"),
    ("\\boxed{", "1", 0.0, "unparseable"),  # unclosed box, no number
    ("1" + "0" * 5000, "0", 0.0, "unparseable"),  # cut number must not read as 000...0
    ("The answer is " + "9" * 2000, "9", 0.0, "unparseable"),  # over max_digits
    ("a" * MB + " so the answer is 42", "42", 1.0, None),  # 1 MB: only the tail is scanned
    ("Answer: 1" + " " * MB, "1", 0.0, "unparseable"),  # answer pushed out of the scanned tail
    ("Answer: 5", "ten", 0.0, "invalid"),  # reference unreadable
]


@pytest.mark.parametrize("completion,ref,score,error", NUMERIC_CASES, ids=range(len(NUMERIC_CASES)))
def test_numeric(completion, ref, score, error):
    t0 = time.perf_counter()
    res = get_reward("numeric")(completion, ref)
    assert (res.score, res.error) == (score, error)
    assert time.perf_counter() - t0 < 0.5


def test_numeric_huge_exact_integers_and_tolerance_option():
    # Exact rational comparison (no float overflow): 10**500 and 10**500 + 1 differ by 1, so the
    # default (equal as numbers) tells them apart; a relative tolerance of 1e-6 (opt-in) does not.
    big = str(10**500)
    near = str(10**500 + 1)
    assert get_reward("numeric")(f"Answer: {near}", big).score == 0.0
    assert get_reward("numeric")(f"Answer: {big}", big).score == 1.0
    loose = get_reward({"name": "numeric", "rel_tol": 1e-6})
    assert loose(f"Answer: {near}", big).score == 1.0


def test_numeric_canonical_answer_and_can_verify():
    fn = get_reward("numeric")
    assert fn.canonical_answer("#### 1,234") == "1234"
    assert fn.canonical_answer("-1.5") == "-3/2"
    assert fn.canonical_answer("\uff14\uff12") == "42"
    assert fn.canonical_answer("no number") is None
    assert fn.canonical_answer("1" * 5000) is None  # over max_digits
    assert fn.can_verify("12") and not fn.can_verify("twelve")


EXACT_CASES = [
    ("Paris", "Paris", 1.0),
    ("  Paris\n", "Paris", 1.0),
    ("paris", "Paris", 0.0),  # exact is case sensitive
    ("I think it is Paris", "Paris", 0.0),
    ("Reasoning...\nAnswer: Paris", "Paris", 1.0),
    ("\\boxed{Paris}", "Paris", 1.0),
    ("", "Paris", 0.0),
]


@pytest.mark.parametrize("completion,ref,score", EXACT_CASES)
def test_exact(completion, ref, score):
    assert get_reward("exact")(completion, ref).score == score


NORMALIZED_CASES = [
    ("paris.", "Paris", 1.0, None),
    ("Answer:   The   U.S.A!", "the usa", 1.0, None),
    ("\uff30\uff41\uff52\uff49\uff53", "paris", 1.0, None),  # fullwidth letters
    ("STRASSE", "stra\u00dfe", 1.0, None),  # casefold: sharp s -> ss
    ("Lyon", "Paris", 0.0, None),
    ("...", "Paris", 0.0, "unparseable"),
]


@pytest.mark.parametrize("completion,ref,score,error", NORMALIZED_CASES)
def test_normalized_string(completion, ref, score, error):
    res = get_reward("normalized_string")(completion, ref)
    assert (res.score, res.error) == (score, error)


MC_CASES = [
    ("Answer: B", "B", 1.0, None),
    ("The answer is (C).", "C", 1.0, None),
    ("answer is b", "B", 0.0, "unparseable"),  # lower-case letters are not choices
    ("Options (A) and (D)... I pick (D)", "D", 1.0, None),  # last parenthesised letter
    ("(A) looks right. Answer: E", "E", 1.0, None),  # Answer: beats parentheses
    ("B", "B", 1.0, None),
    ("B.", "(b)", 1.0, None),  # reference normalised too
    ("\\boxed{\\text{E}}", "E", 1.0, None),
    ("Answer: Both are fine", "B", 0.0, "unparseable"),  # "B" of "Both" is not a choice
    ("Answer: F", "F", 0.0, "invalid"),  # F is outside A-E, reference unreadable
    ("", "A", 0.0, "unparseable"),
    ("answer" + " " * 4000 + "x", "A", 0.0, "unparseable"),  # long blank run in the tail: linear
]


@pytest.mark.parametrize("completion,ref,score,error", MC_CASES, ids=range(len(MC_CASES)))
def test_multiple_choice(completion, ref, score, error):
    t0 = time.perf_counter()
    res = get_reward("multiple_choice")(completion, ref)
    assert (res.score, res.error) == (score, error)
    assert time.perf_counter() - t0 < 0.5


COUNTDOWN_META = {"numbers": [3, 5, 7], "target": 22}  # 3*5+7 = 22; (7-5)*3 = 6
COUNTDOWN_CASES = [
    ("<think>try</think><answer>3*5+7</answer>", 1.0, None),
    ("<answer>(7 - 5) * 3</answer>", 0.0, None),  # valid expression, wrong value
    ("<answer>3*5+7 = 22</answer>", 1.0, None),  # trailing "= target" dropped
    ("22 = 7 + 3*5", 1.0, None),  # the side with the operators is evaluated
    ("Let me think.\nSo the answer is 3 \u00d7 5 + 7.", 1.0, None),  # x sign, prose around it
    ("<answer>3*3+5+7-5</answer>", 0.0, "invalid"),  # reuses 3 and 5
    ("<answer>22</answer>", 0.0, "invalid"),  # 22 is not a given number
    ("<answer>__import__('os').system('echo hi')</answer>", 0.0, "invalid"),
    ("<answer>7**3</answer>", 0.0, "invalid"),  # power is not allowed
    ("<answer>9**9**9**9</answer>", 0.0, "invalid"),  # refused before any evaluation
    ("<answer>3.0*5+7</answer>", 0.0, "invalid"),  # float literal
    ("<answer>(7-7)</answer>", 0.0, "invalid"),  # 7 given once
    ("<answer>5/(7-7)+3</answer>", 0.0, "invalid"),  # reuse caught (7 twice)
    ("<answer>(3+</answer>", 0.0, "unparseable"),
    ("<answer>lambda: 1</answer>", 0.0, "invalid"),
    ("", 0.0, "unparseable"),
    ("<answer>" + "(" * 300 + "3" + ")" * 300 + "</answer>", 0.0, "unparseable"),  # nesting limit
]


@pytest.mark.parametrize("completion,score,error", COUNTDOWN_CASES, ids=range(len(COUNTDOWN_CASES)))
def test_countdown(completion, score, error):
    res = get_reward("countdown")(completion, "22", COUNTDOWN_META)
    assert (res.score, res.error) == (score, error)


def test_countdown_division_and_growth_limits():
    fn = get_reward("countdown")
    # 8 / (3 - 1/... ) style: exact rationals, (6 / 4) * 8 = 12.
    assert fn("<answer>6/4*8</answer>", "12", {"numbers": [4, 6, 8], "target": 12}).score == 1.0
    # Division by zero through a valid-number expression: 6 / (4 - 4) needs 4 twice -> give it twice.
    res = fn("<answer>6/(4-4)</answer>", "1", {"numbers": [4, 4, 6], "target": 1})
    assert (res.score, res.error) == (0.0, "invalid")
    # Growth: ((1e6 * 1e6) * 1000) / 1e6 = 1e9 is the target, but the intermediate 1e15 > 1e12
    # makes it invalid (1e12 itself is allowed: the limit is "abs > 1e12").
    meta = {"numbers": [10**6, 10**6, 10**6, 1000], "target": 10**9}
    assert fn("<answer>1000000*1000000*1000/1000000</answer>", "", meta).error == "invalid"
    assert fn("<answer>1000000*1000000/1000000*1000</answer>", "", meta).score == 1.0
    # require_all: 3*5+7 uses all; 3*7+1? no 1 -> use (3+5)*7 = 56 with numbers [3,5,7,2].
    strict = get_reward({"name": "countdown", "require_all": True})
    meta2 = {"numbers": [3, 5, 7, 2], "target": 56}
    assert strict("<answer>(3+5)*7</answer>", "56", meta2).error == "invalid"
    assert strict("<answer>(3+5)*7*2/2</answer>", "56", meta2).error == "invalid"  # 2 twice
    assert fn("<answer>(3+5)*7</answer>", "56", meta2).score == 1.0


def test_countdown_can_verify():
    fn = get_reward("countdown")
    assert fn.can_verify("22", COUNTDOWN_META)
    assert not fn.can_verify("22", None)  # no numbers
    assert not fn.can_verify("abc", {"numbers": [1, 2]})
    assert not fn.can_verify("2.5", {"numbers": [1, 2]})
    assert fn.canonical_answer("22") == "22"


FORMAT_CASES = [
    # (completion, score, has_answer, at_end, short)
    ("Reasoning. \\boxed{3}", 1.0, 1.0, 1.0, 1.0),
    ("Reasoning.\nAnswer: 4", 1.0, 1.0, 1.0, 1.0),
    ("<think>x</think><answer>3*5+7</answer>", 1.0, 1.0, 1.0, 1.0),
    ("no final answer here", 0.0, 0.0, 0.0, 1.0),
    ("\\boxed{} and Answer:", 0.0, 0.0, 0.0, 1.0),  # empty answers do not count
    ("\\boxed{3}" + " then I keep talking" * 10, 0.0, 1.0, 0.0, 1.0),  # 160 chars after > 64
    ("x" * 3000 + " Answer: 3", 0.0, 1.0, 1.0, 0.0),  # 3010 chars > max_len 2048
]


@pytest.mark.parametrize("completion,score,has,end,short", FORMAT_CASES, ids=range(len(FORMAT_CASES)))
def test_format(completion, score, has, end, short):
    res = get_reward("format")(completion, "ignored")
    assert res.score == score
    assert res.parts == {"has_answer": has, "at_end": end, "short": short}


def test_composite_weighted_sum_and_parts():
    fn = get_reward(
        {"name": "composite", "components": [{"name": "numeric", "weight": 1.0}, {"name": "format", "weight": 0.5}]}
    )
    # Correct and well formatted: 1*1 + 0.5*1.
    res = fn("Answer: 5", "5")
    assert res.score == pytest.approx(1.5) and res.parts == {"numeric": 1.0, "format": 1.0} and res.error is None
    # Wrong but well formatted: 0.5; no answer at all: numeric unparseable is reported.
    assert fn("Answer: 6", "5").score == pytest.approx(0.5)
    res = fn("no idea", "5")
    assert (res.score, res.error) == (0.0, "unparseable")
    # Version follows the children (cache keys change when one does) and the spec round-trips.
    assert "numeric:2" in fn.version and "format:1" in fn.version
    assert get_reward(fn.spec()).spec() == fn.spec()
    assert not fn.can_verify("five") and fn.can_verify("5")


def test_composite_duplicate_names_get_distinct_parts():
    fn = get_reward({"name": "composite", "components": ["numeric", {"name": "numeric", "abs_tol": 1.0}]})
    res = fn("Answer: 5.5", "5")  # strict: 0; abs_tol 1: 1
    assert res.parts == {"numeric": 0.0, "numeric#1": 1.0} and res.score == 1.0


def test_registry_names_and_errors():
    assert set(REWARDS) == {"numeric", "exact", "normalized_string", "multiple_choice", "countdown", "format", "composite",
                            "math", "judge"}
    for name in REWARDS:
        if name != "composite":
            fn = get_reward(name)
            assert fn.name == name and isinstance(fn.version, str) and fn.version
    with pytest.raises(ValueError, match="allowed"):
        get_reward("nope")
    with pytest.raises(ValueError, match="rel_tl"):
        get_reward({"name": "numeric", "rel_tl": 0.1})  # typo in an option is named
    # A row's `task` string may carry options as a JSON object.
    assert get_reward('{"name": "numeric", "abs_tol": 1.0}')("Answer: 5.5", "5").score == 1.0
    with pytest.raises(ValueError, match="not valid JSON"):
        get_reward('{"name": "numeric",')


class _Raises(RewardFn):
    name, version = "raises", "1"

    def _score(self, completion, answer, meta):
        raise RuntimeError("boom")


class _Slow(RewardFn):
    name, version = "slow", "1"

    def _score(self, completion, answer, meta):
        time.sleep(0.05)
        return RewardResult(1.0, {"x": 1.0})


def test_safe_call_turns_exceptions_and_slowness_into_zero():
    assert _Raises()("a", "b") == RewardResult(0.0, {}, "exception")
    slow = _Slow({"time_limit_s": 0.01})
    res = slow("a", "b")
    assert (res.score, res.error) == (0.0, "timeout")
    assert _Slow({"time_limit_s": 5.0})("a", "b").score == 1.0
    # Plain callables and non-string inputs.
    assert safe_call(lambda c, a, m: RewardResult(float(c == a)), 3, "3").score == 1.0
    assert safe_call(lambda c, a, m: 1.0, "x", "y").error == "exception"  # wrong return type


def test_non_string_inputs_do_not_raise():
    fn = get_reward("numeric")
    assert fn(None, 5).error == "unparseable"
    assert fn("Answer: 5", 5).score == 1.0

