"""Group advantages: values derived by hand in the comments."""

import math

import pytest
import torch

from components.rl.advantages import batch_normalize, group_advantages, zero_variance_groups


def test_grpo_uses_population_std():
    # [1,0,0,0]: mean 1/4; population var = 1/4 * 3/4 = 3/16 -> std sqrt(3)/4.
    # A_0 = (3/4)/(sqrt3/4) = sqrt3; A_others = (-1/4)/(sqrt3/4) = -1/sqrt3.
    a = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), "grpo", eps=0.0)
    s3 = math.sqrt(3.0)
    torch.testing.assert_close(a, torch.tensor([[s3, -1 / s3, -1 / s3, -1 / s3]]))


def test_grpo_two_samples_gives_plus_minus_one():
    # [0,1]: mean 1/2, population std 1/2 -> (-1/2)/(1/2) = -1, +1. (Sample std would give +-0.707.)
    a = group_advantages(torch.tensor([[0.0, 1.0]]), "grpo", eps=0.0)
    torch.testing.assert_close(a, torch.tensor([[-1.0, 1.0]]))


def test_grpo_eps_enters_denominator():
    # [0,1]: std 1/2; with eps = 1/2 the denominator is 1 -> -1/2, 1/2.
    a = group_advantages(torch.tensor([[0.0, 1.0]]), "grpo", eps=0.5)
    torch.testing.assert_close(a, torch.tensor([[-0.5, 0.5]]))


def test_zero_variance_group_gets_zero_advantage_in_all_modes():
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    for mode in ("grpo", "drgrpo", "loo"):
        assert torch.equal(group_advantages(r, mode), torch.zeros(2, 3))


def test_grpo_without_std_and_drgrpo_only_center():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 4.0, 4.0, 6.0]])
    # Row means 1/4 and 4.
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25], [-2.0, 0.0, 0.0, 2.0]])
    torch.testing.assert_close(group_advantages(r, "grpo", std_normalize=False), expected)
    torch.testing.assert_close(group_advantages(r, "drgrpo"), expected)
    torch.testing.assert_close(group_advantages(r, "drgrpo", std_normalize=False), expected)


def test_loo_is_reward_minus_mean_of_others():
    # r_0 = 1 - mean(0,0,0) = 1; r_1 = 0 - mean(1,0,0) = -1/3 (= 4/3 * centered).
    a = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), "loo")
    torch.testing.assert_close(a, torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3]]))
    # G=2, [3, 5]: 3 - 5 = -2, 5 - 3 = 2.
    torch.testing.assert_close(group_advantages(torch.tensor([[3.0, 5.0]]), "loo"), torch.tensor([[-2.0, 2.0]]))


def test_loo_single_sample_is_zero():
    assert torch.equal(group_advantages(torch.tensor([[5.0], [1.0]]), "loo"), torch.zeros(2, 1))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="allowed"):
        group_advantages(torch.zeros(2, 2), "ppo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        group_advantages(torch.zeros(4))
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        zero_variance_groups(torch.zeros(4))


def test_batch_normalize_uses_whole_batch_std():
    # Values 1,-1,3,-3: mean 0, population var (1+1+9+9)/4 = 5.
    adv = torch.tensor([[1.0, -1.0], [3.0, -3.0]])
    s5 = math.sqrt(5.0)
    torch.testing.assert_close(batch_normalize(adv, eps=0.0), adv / s5)


def test_batch_normalize_mask_excludes_and_zeroes():
    # Only the first row counts: mean 0, var 1 -> unchanged; masked row -> 0.
    adv = torch.tensor([[1.0, -1.0], [30.0, -30.0]])
    mask = torch.tensor([[True, True], [False, False]])
    out = batch_normalize(adv, mask, eps=0.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
    assert torch.equal(batch_normalize(adv, torch.zeros(2, 2, dtype=torch.bool)), torch.zeros(2, 2))


def test_batch_normalize_center_switch():
    # [2, 4]: mean 3, population std 1 -> centered [-1, 1]; uncentered [2, 4] / 1.
    adv = torch.tensor([2.0, 4.0])
    torch.testing.assert_close(batch_normalize(adv, eps=0.0), torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(batch_normalize(adv, eps=0.0, center=False), torch.tensor([2.0, 4.0]))


def test_zero_variance_groups_with_tolerance():
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.5005]])
    assert zero_variance_groups(r).tolist() == [True, False, False]
    assert zero_variance_groups(r, atol=1e-3).tolist() == [True, False, True]
