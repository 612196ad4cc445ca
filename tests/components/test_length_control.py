"""Length schedules and DAPO's soft overlong penalty, checked against hand-derived numbers."""

import pytest
from pydantic import ValidationError

from components.engines.base import Sample
from components.rl.length import LengthScheduleConfig, flag_truncated, max_new_tokens_at, overlong_penalty


def test_constant_schedule():
    cfg = LengthScheduleConfig(kind="constant", start=16, end=99, period=5)
    assert [max_new_tokens_at(s, cfg) for s in (0, 1, 100)] == [16, 16, 16]


def test_linear_schedule_ramps_then_holds():
    # 16 -> 64 over 4 steps: +48/4 = +12 a step, then flat at 64.
    cfg = LengthScheduleConfig(kind="linear", start=16, end=64, period=4)
    assert [max_new_tokens_at(s, cfg) for s in range(7)] == [16, 28, 40, 52, 64, 64, 64]
    # Decreasing: 64 -> 16 over 3 steps, -16 a step.
    down = LengthScheduleConfig(kind="linear", start=64, end=16, period=3)
    assert [max_new_tokens_at(s, down) for s in range(5)] == [64, 48, 32, 16, 16]
    # Rounding half up: 10 + 5*s/4 = 11.25, 12.5, 13.75 -> 11, 13, 14.
    odd = LengthScheduleConfig(kind="linear", start=10, end=15, period=4)
    assert [max_new_tokens_at(s, odd) for s in range(1, 4)] == [11, 13, 14]


def test_cyclic_schedule_alternates_short_and_long():
    # period 4: steps 0,1 short (8), steps 2,3 long (32), repeating.
    cfg = LengthScheduleConfig(kind="cyclic", start=8, end=32, period=4)
    assert [max_new_tokens_at(s, cfg) for s in range(9)] == [8, 8, 32, 32, 8, 8, 32, 32, 8]
    # period 3: the short phase takes ceil(3/2) = 2 steps.
    cfg3 = LengthScheduleConfig(kind="cyclic", start=8, end=32, period=3)
    assert [max_new_tokens_at(s, cfg3) for s in range(6)] == [8, 8, 32, 8, 8, 32]


def test_schedule_validation_names_fields():
    with pytest.raises(ValidationError, match="period"):
        LengthScheduleConfig(kind="cyclic", start=8, end=32, period=1)
    with pytest.raises(ValidationError, match="kind"):
        LengthScheduleConfig(kind="cosine")
    with pytest.raises(ValidationError, match="stride"):
        LengthScheduleConfig(stride=2)
    with pytest.raises(ValueError):
        max_new_tokens_at(-1, LengthScheduleConfig())


def test_overlong_penalty_soft_ramp():
    # max_len 20, buffer 4: free up to 16, then -1/4 per extra token, -1 from 20 on.
    got = overlong_penalty([10, 16, 17, 18, 19, 20, 25], max_len=20, buffer_len=4, penalty=1.0)
    assert got == pytest.approx([0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0])
    # penalty 0.5 scales the ramp: 19 -> -0.5 * 3/4 = -0.375.
    assert overlong_penalty([19], 20, 4, 0.5) == pytest.approx([-0.375])
    # No buffer: a hard cliff just past max_len.
    assert overlong_penalty([20, 21], 20, 0, 1.0) == pytest.approx([0.0, -1.0])
    with pytest.raises(ValueError):
        overlong_penalty([1], 10, 11, 1.0)


def test_flag_truncated():
    mk = lambda r: Sample(0, 0, [1], [-1.0], "a", r)  # noqa: E731
    assert flag_truncated([mk("stop"), mk("length"), mk("stop")]) == [False, True, False]
