"""Policy losses on tiny tensors; every expected number is derived in the comments."""

import math

import pytest
import torch

from components.rl.losses import LossConfig, kl_penalty, policy_loss


def _leaf(x):
    return torch.tensor(x, dtype=torch.float64, requires_grad=True)


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_ratio_one_gives_minus_mean_advantage_and_per_token_gradient():
    # logp == old -> r = 1 everywhere, no clipping: token loss = -A_i.
    # grpo: mean over 3 tokens then over 2 sequences: -(1 + -2)/2 = 0.5.
    # d loss / d logp_it = -A_i * r / (T_i * B) = -A_i / 6 -> seq0 -1/6, seq1 +1/3.
    logp = _leaf([[-1.0, -2.0, -0.5], [-0.3, -0.7, -1.1]])
    loss, m = policy_loss(logp, logp.detach().clone(), _t([1.0, -2.0]), torch.ones(2, 3), LossConfig())
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    torch.testing.assert_close(logp.grad, _t([[-1 / 6] * 3, [1 / 3] * 3]))
    assert m["ratio_mean"] == pytest.approx(1.0) and m["ratio_max"] == pytest.approx(1.0)
    assert m["clip_frac"] == 0.0 and m["tis_weight_mean"] == 1.0


# (advantage, ratio, expected loss, expected grad d/dlogp, clipped low, clipped high), clip 0.2.
# Unclipped: loss = -r*A and d/dlogp = -r*A (dr/dlogp = r). Clipped: constant, grad 0.
CLIP_CASES = [
    (1.0, 1.19, -1.19, -1.19, 0, 0),  # just inside 1+0.2
    (1.0, 1.21, -1.20, 0.0, 0, 1),  # just outside: A>0 clips at the top
    (1.0, 0.70, -0.70, -0.70, 0, 0),  # A>0 never clips at the bottom (min picks r*A)
    (-1.0, 0.81, 0.81, 0.81, 0, 0),  # just inside 1-0.2
    (-1.0, 0.79, 0.80, 0.0, 1, 0),  # just outside: A<0 clips at the bottom
    (-1.0, 1.50, 1.50, 1.50, 0, 0),  # A<0 never clips at the top (pessimistic bound)
]


@pytest.mark.parametrize("adv,ratio,exp_loss,exp_grad,lo,hi", CLIP_CASES)
def test_clip_boundaries(adv, ratio, exp_loss, exp_grad, lo, hi):
    logp = _leaf([[math.log(ratio)]])
    loss, m = policy_loss(logp, _t([[0.0]]), _t([adv]), torch.ones(1, 1), LossConfig())
    assert loss.item() == pytest.approx(exp_loss)
    loss.backward()
    assert logp.grad.item() == pytest.approx(exp_grad)
    assert (m["clip_frac_low"], m["clip_frac_high"], m["clip_frac"]) == (lo, hi, lo + hi)


def test_dapo_clip_higher():
    # clip_high 0.28: ratio 1.25 with A=1 is no longer clipped -> loss -1.25.
    cfg = LossConfig(variant="dapo", clip_high=0.28)
    loss, m = policy_loss(_t([[math.log(1.25)]]), _t([[0.0]]), _t([1.0]), torch.ones(1, 1), cfg)
    assert loss.item() == pytest.approx(-1.25) and m["clip_frac"] == 0.0


def test_mask_excludes_padding_even_if_it_holds_inf_and_nan():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = _t([1.0, -1.0])
    clean = _leaf([[-1.0, -1.0, -1.0], [-0.5, 0.0, 0.0]])
    dirty = _leaf([[-1.0, -1.0, -1.0], [-0.5, float("inf"), float("nan")]])
    old = _t([[-1.1, -0.9, -1.0], [-0.5, float("-inf"), 3.0]])
    for variant in ("grpo", "dapo", "drgrpo", "gspo"):
        cfg = LossConfig(variant=variant)
        l1, m1 = policy_loss(clean, old, adv, mask, cfg, ref_logp=old, behaviour_logp=old)
        l2, m2 = policy_loss(dirty, old, adv, mask, cfg, ref_logp=old, behaviour_logp=old)
        assert torch.isfinite(l2) and l1.item() == pytest.approx(l2.item())
        g1, g2 = (torch.autograd.grad(x, p)[0] for x, p in ((l1, clean), (l2, dirty)))
        torch.testing.assert_close(g1, g2)
        assert torch.equal(g2[1, 1:], torch.zeros(2, dtype=torch.float64))
        assert m1 == pytest.approx(m2)


def _unequal_lengths():
    # Lengths 3 and 1, r = 1, A = [2, -1] -> token losses -2,-2,-2 and +1.
    logp = _leaf([[-1.0, -1.0, -1.0], [-1.0, 0.0, 0.0]])
    return logp, logp.detach().clone(), _t([2.0, -1.0]), torch.tensor([[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize(
    "variant,norm_len,exp_loss,exp_grad_rows",
    [
        # grpo: seq means -2 and 1 -> -1/2. grad = -A/(T_i*B): seq0 -2/6, seq1 +1/2.
        ("grpo", None, -0.5, (-1 / 3, 0.5)),
        # dapo: (-6 + 1) / 4 tokens = -5/4. grad = -A/4: seq0 -1/2, seq1 +1/4.
        ("dapo", None, -1.25, (-0.5, 0.25)),
        # drgrpo, normaliser T=3: (-6/3 + 1/3)/2 = -5/6. grad = -A/(3*2): seq0 -1/3, seq1 +1/6.
        ("drgrpo", None, -5 / 6, (-1 / 3, 1 / 6)),
        # drgrpo, normaliser 4: (-6/4 + 1/4)/2 = -5/8. grad = -A/(4*2): seq0 -1/4, seq1 +1/8.
        ("drgrpo", 4, -5 / 8, (-0.25, 0.125)),
    ],
)
def test_aggregation_on_unequal_lengths(variant, norm_len, exp_loss, exp_grad_rows):
    logp, old, adv, mask = _unequal_lengths()
    cfg = LossConfig(variant=variant, drgrpo_norm_len=norm_len)
    loss, _ = policy_loss(logp, old, adv, mask, cfg)
    assert loss.item() == pytest.approx(exp_loss)
    loss.backward()
    g0, g1 = exp_grad_rows
    torch.testing.assert_close(logp.grad, _t([[g0, g0, g0], [g1, 0.0, 0.0]]))


def test_gspo_sequence_ratio_value_clip_and_gradient():
    # seq0 log-ratios [0.1, -0.3] -> mean -0.1 -> s0 = e^-0.1 = 0.904837, A0 = +1:
    #   below 1 - 3e-4 but A > 0, so not clipped: loss_0 = -s0.
    # seq1 log-ratio [0.2] (second token padding) -> s1 = e^0.2 = 1.221403, A1 = +1:
    #   above 1 + 4e-4 -> clipped: loss_1 = -1.0004, no gradient.
    # loss = (-s0 - 1.0004)/2; d/dlogp_0t = -A0 * s0 / |y0| / B = -s0/4.
    old = _t([[0.0, 0.0], [0.0, 0.0]])
    logp = _leaf([[0.1, -0.3], [0.2, 5.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, m = policy_loss(logp, old, _t([1.0, 1.0]), mask, LossConfig(variant="gspo"))
    s0, s1 = math.exp(-0.1), math.exp(0.2)
    assert loss.item() == pytest.approx((-s0 - 1.0004) / 2)
    loss.backward()
    torch.testing.assert_close(logp.grad, _t([[-s0 / 4, -s0 / 4], [0.0, 0.0]]))
    # 1 of 3 real tokens sits in a clipped sequence; every token carries its sequence's ratio.
    assert m["clip_frac_high"] == pytest.approx(1 / 3) and m["clip_frac_low"] == 0.0
    assert m["ratio_mean"] == pytest.approx((2 * s0 + s1) / 3)
    assert m["ratio_max"] == pytest.approx(s1)


def test_gspo_gradient_matches_direct_sequence_level_formula():
    # Direct GSPO: s_i = exp(mean_t(logp - old)), loss = mean_i -min(s_i A_i, clip(s_i) A_i).
    torch.manual_seed(0)
    old = torch.randn(3, 4, dtype=torch.float64)
    logp0 = old + 0.2 * torch.randn(3, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    adv = _t([1.0, -0.5, 2.0])
    cfg = LossConfig(variant="gspo", gspo_clip_low=0.5, gspo_clip_high=0.5)  # nothing clips
    a = logp0.clone().requires_grad_(True)
    loss, _ = policy_loss(a, old, adv, mask, cfg)
    (ga,) = torch.autograd.grad(loss, a)
    b = logp0.clone().requires_grad_(True)
    mf = mask.double()
    s = torch.exp(((b - old) * mf).sum(1) / mf.sum(1))
    direct = (-torch.minimum(s * adv, s.clamp(0.5, 1.5) * adv)).mean()
    (gb,) = torch.autograd.grad(direct, b)
    assert loss.item() == pytest.approx(direct.item())
    torch.testing.assert_close(ga, gb)


def test_kl_estimators_by_hand():
    # p = 0.5, ref = 0.25: k1 = log(0.5/0.25) = ln 2; k3 = 0.5 - ln(0.5) - 1 = ln2 - 1/2.
    lp, ref = _t([math.log(0.5)]), _t([math.log(0.25)])
    ln2 = math.log(2.0)
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(ln2)
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(ln2 - 0.5)
    # k3 is >= 0 and 0 at logp == ref; k1 goes negative when the policy is below the reference.
    assert kl_penalty(ref, ref, "k3").item() == 0.0
    assert kl_penalty(ref, lp, "k1").item() == pytest.approx(-ln2)
    with pytest.raises(ValueError, match="allowed"):
        kl_penalty(lp, ref, "k2")  # type: ignore[arg-type]


@pytest.mark.parametrize("est,exp_kl,exp_grad", [("k1", math.log(2.0), 1.0), ("k3", math.log(2.0) - 0.5, 0.5)])
def test_kl_term_in_loss(est, exp_kl, exp_grad):
    # A = 0 removes the policy term: loss = kl_coef * kl. d k1/dlogp = 1;
    # d k3/dlogp = 1 - exp(ref - logp) = 1 - 1/2.
    logp = _leaf([[math.log(0.5)]])
    cfg = LossConfig(kl_coef=0.1, kl_estimator=est)
    loss, m = policy_loss(logp, logp.detach(), _t([0.0]), torch.ones(1, 1), cfg, ref_logp=_t([[math.log(0.25)]]))
    assert m["kl"] == pytest.approx(exp_kl) and loss.item() == pytest.approx(0.1 * exp_kl)
    loss.backward()
    assert logp.grad.item() == pytest.approx(0.1 * exp_grad)


def test_tis_weights_are_capped_and_detached():
    # old = 0; behaviour log-probs ln(1/3) and ln 2 -> w = exp(old - b) = 3 -> capped 2, and 1/2.
    # r = 1, A = 1: token losses -2 and -1/2 -> grpo mean -1.25; grad = -w/2 = [-1, -1/4].
    logp = _leaf([[0.0, 0.0]])
    beh = _t([[math.log(1 / 3), math.log(2.0)]])
    loss, m = policy_loss(logp, _t([[0.0, 0.0]]), _t([1.0]), torch.ones(1, 2), LossConfig(), behaviour_logp=beh)
    assert loss.item() == pytest.approx(-1.25) and m["tis_weight_mean"] == pytest.approx(1.25)
    loss.backward()
    torch.testing.assert_close(logp.grad, _t([[-1.0, -0.25]]))
    # Mismatch k3 per token: exp(x) - x - 1 with x = old - b = ln 3, -ln 2.
    k3 = (3 - math.log(3) - 1 + 0.5 + math.log(2) - 1) / 2
    assert m["mismatch_k3"] == pytest.approx(k3)
    # tis_cap=None turns the correction off: loss back to -1.
    loss2, m2 = policy_loss(logp, _t([[0.0, 0.0]]), _t([1.0]), torch.ones(1, 2), LossConfig(tis_cap=None), behaviour_logp=beh)
    assert loss2.item() == pytest.approx(-1.0) and m2["tis_weight_mean"] == 1.0


def test_entropy_bonus_aggregated_like_policy_term():
    # grpo: seq means (1+2+3)/3 = 2 and 4 -> 3; loss = -0.1 * 3 with A = 0.
    # dapo: (1+2+3+4)/4 = 2.5.
    ent = _t([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    z = torch.zeros(2, 3, dtype=torch.float64)
    loss, m = policy_loss(z, z, _t([0.0, 0.0]), mask, LossConfig(entropy_coef=0.1), entropy=ent)
    assert m["entropy"] == pytest.approx(3.0) and loss.item() == pytest.approx(-0.3)
    _, m = policy_loss(z, z, _t([0.0, 0.0]), mask, LossConfig(variant="dapo"), entropy=ent)
    assert m["entropy"] == pytest.approx(2.5)


def test_token_level_advantages_accepted():
    # [B, T] advantages equal to the broadcast [B] ones give the same loss.
    logp = _t([[0.1, -0.1], [0.05, 0.0]])
    old, mask = torch.zeros(2, 2, dtype=torch.float64), torch.ones(2, 2)
    a1, _ = policy_loss(logp, old, _t([1.0, -1.0]), mask, LossConfig())
    a2, _ = policy_loss(logp, old, _t([[1.0, 1.0], [-1.0, -1.0]]), mask, LossConfig())
    assert a1.item() == pytest.approx(a2.item())


def test_config_and_argument_errors():
    with pytest.raises(ValueError, match="varient"):
        LossConfig(varient="dapo")
    with pytest.raises(ValueError, match="variant"):
        LossConfig(variant="ppo")
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(z, z, torch.zeros(1), torch.ones(1, 2), LossConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(z, z, torch.zeros(1), torch.ones(1, 2), LossConfig(entropy_coef=0.1))
    with pytest.raises(ValueError, match="same"):
        policy_loss(z, torch.zeros(1, 3), torch.zeros(1), torch.ones(1, 2), LossConfig())


@pytest.mark.parametrize("variant", ["grpo", "dapo", "drgrpo", "gspo"])
def test_gradcheck_all_terms(variant):
    # Small log-ratios keep every ratio inside the clip range (clip ranges widened for gspo), away
    # from the kinks of min/clamp, so finite differences are valid.
    torch.manual_seed(1)
    old = -torch.rand(2, 3, dtype=torch.float64) - 0.5
    logp = (old + 0.01 * torch.randn(2, 3, dtype=torch.float64)).requires_grad_(True)
    ref = old - 0.05
    ent = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    cfg = LossConfig(variant=variant, kl_coef=0.05, entropy_coef=0.01, gspo_clip_low=0.2, gspo_clip_high=0.2)
    beh = old + 0.1

    def f(lp, e):
        return policy_loss(lp, old, _t([0.7, -1.3]), mask, cfg, ref_logp=ref, behaviour_logp=beh, entropy=e)[0]

    assert torch.autograd.gradcheck(f, (logp, ent))
