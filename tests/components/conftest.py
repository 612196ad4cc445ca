"""Fixtures shared by the component tests."""

from __future__ import annotations

import pytest


class LetterReward:
    """Scores 1 when a completion starts with a letter (about half of the tiny random policy's
    samples): groups have reward variance, so every RL step really updates the weights."""

    version = "test"

    def __call__(self, text, answer, meta=None):
        from components.rewards import RewardResult

        return RewardResult(score=float(text[:1].isalpha()), parts={}, error=None)


@pytest.fixture
def letter_reward(monkeypatch):
    """Every reward name the RL scorer asks for is LetterReward."""
    import components.scoring as scoring

    monkeypatch.setattr(scoring, "get_reward", lambda name: LetterReward())
