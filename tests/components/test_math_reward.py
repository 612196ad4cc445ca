"""The `math` reward: math-verify equivalence in a killable worker process, under size and time limits."""

from __future__ import annotations

import threading
import time

import pytest

from components.rewards import get_reward
from components.rewards.parsing import bracket_depth, extract_math_answer
from components.rewards.worker import WorkerPool, WorkerTimeout

EQUIVALENT = [
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("So the ratio is \\boxed{\\dfrac{3}{4}}.", "3/4"),
    ("The solution set is $(1,2]$", "(1,2]"),
    ("\\boxed{x^2-1}", "(x-1)(x+1)"),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}"),
    ("\\boxed{\\{3, 1, 2\\}}", "\\{1,2,3\\}"),  # sets ignore order
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),  # GSM8K completion
    ("the total is 72 clips", "She sold 48/2 = 24 in May.\n#### 72"),  # GSM8K reference
    ("Answer: $\\frac{\\pi}{2}$", "\\boxed{\\pi/2}"),
]

NOT_EQUIVALENT = [
    ("\\boxed{\\frac{1}{3}}", "0.5"),
    ("$(1,2]$", "[1,2]"),  # open vs closed end
    ("\\boxed{x^2+1}", "(x-1)(x+1)"),
    ("\\boxed{\\sqrt{8}}", "3\\sqrt{2}"),
    ("#### 71", "72"),
]


@pytest.fixture(scope="module")
def math_reward():
    return get_reward("math")


@pytest.mark.parametrize("completion,ref", EQUIVALENT, ids=range(len(EQUIVALENT)))
def test_equivalent_answers_score_one(math_reward, completion, ref):
    res = math_reward(completion, ref)
    assert (res.score, res.error) == (1.0, None), res


@pytest.mark.parametrize("completion,ref", NOT_EQUIVALENT, ids=range(len(NOT_EQUIVALENT)))
def test_different_answers_score_zero(math_reward, completion, ref):
    res = math_reward(completion, ref)
    assert (res.score, res.error) == (0.0, None), res


def test_extraction_rules_in_order():
    assert extract_math_answer("x \\boxed{a{b}c} then #### 5") == ("a{b}c", "boxed")
    assert extract_math_answer("work\n#### 1,000\nthanks") == ("1,000", "gsm8k")
    assert extract_math_answer("Answer: $x+1$.") == ("$x+1$", "answer_line")
    assert extract_math_answer("first $a$ then $$b^2$$ done") == ("b^2", "math_span")
    assert extract_math_answer("it was 3, then 4") == ("4", "last_number")
    assert extract_math_answer("nothing here") == (None, "none")
    assert bracket_depth("((a)[{b}])") == 3 and bracket_depth(")))(") == 1


def test_missing_answer_and_bad_reference(math_reward):
    assert math_reward("I have no idea", "1").error == "unparseable"
    assert math_reward("\\boxed{5}", "").error == "invalid"
    assert not math_reward.can_verify("")


def _timed(fn, *args):
    start = time.perf_counter()
    res = fn(*args)
    return res, time.perf_counter() - start


def test_pathological_inputs_finish_within_the_limit(math_reward):
    limit = math_reward.config.timeout_s
    math_reward("\\boxed{1}", "1")  # the worker is warm: what follows measures the checks, not a start
    tower, took = _timed(math_reward, "\\boxed{9^{9^{9^{9}}}}", "1")  # sympy would compute 9^387420489
    assert tower.error == "timeout" and tower.score == 0.0
    assert took < limit + 3.0
    nested = "(" * 100_000 + "1" + ")" * 100_000
    for completion in (nested, "\\boxed{" + nested + "}", "7" * 1_000_000, "x^" * 500_000 + "2"):
        res, took = _timed(math_reward, completion, "1")
        assert res.score == 0.0 and res.error in {"unparseable", "timeout"}, res
        assert took < limit + 3.0
    # The killed worker was replaced: the next ordinary check still works.
    assert math_reward("\\boxed{2}", "2").score == 1.0


def test_called_from_other_threads(math_reward):
    results: dict[int, float] = {}

    def work(i: int) -> None:
        results[i] = math_reward(f"\\boxed{{\\frac{{{i}}}{{2}}}}", str(i / 2)).score

    threads = [threading.Thread(target=work, args=(i,)) for i in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: 1.0 for i in range(1, 5)}


def test_worker_pool_kills_a_hung_call_and_starts_a_new_child():
    pool = WorkerPool("time:sleep", size=1)
    try:
        assert pool.call(0, timeout_s=30) is None
        with pytest.raises(WorkerTimeout):
            pool.call(60, timeout_s=0.5)
        assert pool.kills == 1
        assert pool.call(0, timeout_s=30) is None  # a fresh child answers
    finally:
        pool.close()
