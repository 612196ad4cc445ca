"""Verifiable reward functions: a registry of answer checkers that never raise and never hang.

- :mod:`~components.rewards.parsing`: reading answers and exact numbers out of completions,
- :mod:`~components.rewards.base`: :class:`RewardFn`, its shared options and :func:`safe_call`,
- one module per reward family: :mod:`~components.rewards.numeric`, :mod:`~components.rewards.strings`,
  :mod:`~components.rewards.choice`, :mod:`~components.rewards.countdown`,
  :mod:`~components.rewards.format`, :mod:`~components.rewards.composite`,
  :mod:`~components.rewards.math` (math-verify in :mod:`~components.rewards.worker` processes),
  :mod:`~components.rewards.judge` (an LLM judge over an OpenAI-compatible API, verdicts cached),
- :mod:`~components.rewards.registry`: names to classes and :func:`get_reward`.

A new reward is one module: a ``RewardFn`` subclass decorated with ``@register``, imported below.
"""

from components.rewards.base import RewardConfig, RewardFn, RewardResult, safe_call
from components.rewards.choice import MultipleChoiceConfig, MultipleChoiceReward
from components.rewards.composite import CompositeConfig, CompositeReward
from components.rewards.countdown import CountdownConfig, CountdownReward
from components.rewards.format import FormatConfig, FormatReward
from components.rewards.judge import JudgeConfig, JudgeReward
from components.rewards.math import MathConfig, MathReward
from components.rewards.numeric import NumericConfig, NumericReward
from components.rewards.registry import REWARDS, get_reward, register
from components.rewards.strings import ExactReward, NormalizedStringReward

__all__ = [
    "REWARDS",
    "CompositeConfig",
    "CompositeReward",
    "CountdownConfig",
    "CountdownReward",
    "ExactReward",
    "FormatConfig",
    "FormatReward",
    "JudgeConfig",
    "JudgeReward",
    "MathConfig",
    "MathReward",
    "MultipleChoiceConfig",
    "MultipleChoiceReward",
    "NormalizedStringReward",
    "NumericConfig",
    "NumericReward",
    "RewardConfig",
    "RewardFn",
    "RewardResult",
    "get_reward",
    "register",
    "safe_call",
]
