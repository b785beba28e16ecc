"""KID's batched policy update (informative_dialogue/kid/policy_update.py)."""
from __future__ import annotations

import math

import pytest
import torch

from informative_dialogue.kid.policy_update import kid_policy_update, optimal_demo_mass


def toy(n: int = 4, v: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, v, generator=g) * 1.5).log_softmax(-1)


def test_one_update_raises_demo_mass_and_kl_near_sigma() -> None:
    # toy distribution: 10 tokens, the two demonstration tokens hold 20% of the mass
    lp = torch.tensor([[2.0, 1.0, 1.5, 0.5, 1.0, 0.2, 1.2, 0.8, 1.1, 0.9]]).log_softmax(-1)
    mask = torch.zeros_like(lp, dtype=torch.bool)
    mask[0, [1, 4]] = True
    before = lp.exp()[mask].sum()
    res = kid_policy_update(lp, mask, torch.ones(1), steps=3, lr=0.1, sigma=0.02)
    after = res.log_probs.exp()[mask].sum()
    assert after > before
    assert torch.allclose(res.log_probs.exp().sum(-1), torch.ones(1), atol=1e-5)
    # the KL is of the order of the target sigma, within the controller's band
    assert 0.01 <= float(res.kl[0]) <= 0.04, float(res.kl[0])
    assert res.beta[0] == 1.0  # inside the band: beta unchanged
    # every demonstration token gains, every other token loses probability
    ratio = res.log_probs.exp() / lp.exp()
    assert bool((ratio[mask] > 1).all()) and bool((ratio[~mask] < 1).all())


def test_kl_is_controlled_around_sigma_over_steps() -> None:
    """Repeated steps with the adaptive beta keep KL near sigma (PPO-style control)."""
    sigma = 0.02
    lp = toy(3, seed=1)
    mask = torch.zeros_like(lp, dtype=torch.bool)
    mask[0, :2] = True
    mask[1, :8] = True
    mask[2, 5:20] = True
    beta = torch.ones(3)
    kls = []
    for _ in range(30):
        res = kid_policy_update(lp, mask, beta, steps=3, lr=0.2, sigma=sigma)
        beta = res.beta
        kls.append(res.kl)
    last = torch.stack(kls[-10:])
    assert float(last.mean()) == pytest.approx(sigma, rel=0.75)
    assert bool((last <= 4 * sigma).all())


def test_beta_doubles_and_halves() -> None:
    lp = toy(3, seed=2)
    mask = torch.zeros_like(lp, dtype=torch.bool)
    mask[:, :6] = True
    beta = torch.tensor([1.0, 1.0, 1.0])
    # huge steps -> KL >= 2 sigma -> beta doubles; tiny steps -> KL <= sigma/2 -> halves
    big = kid_policy_update(lp, mask, beta, steps=3, lr=1.0, sigma=0.02)
    assert bool((big.kl >= 0.04).all())
    assert torch.equal(big.beta, beta * 2)
    small = kid_policy_update(lp, mask, beta, steps=1, lr=1e-3, sigma=0.02)
    assert bool((small.kl <= 0.01).all())
    assert torch.equal(small.beta, beta / 2)
    # in between: unchanged; sigma chosen around the row's actual KL
    mid = kid_policy_update(lp[:1], mask[:1], beta[:1], steps=3, lr=0.1, sigma=1.0)
    sigma_mid = float(mid.kl[0])
    mid = kid_policy_update(lp[:1], mask[:1], beta[:1], steps=3, lr=0.1, sigma=sigma_mid)
    assert torch.equal(mid.beta, beta[:1])
    # clamped: beta never reaches 0 or inf
    tiny = kid_policy_update(lp, mask, torch.full((3,), 1e-6), steps=1, lr=1e-3, sigma=0.02, beta_min=1e-6)
    assert bool((tiny.beta == 1e-6).all())


def test_rows_without_demonstrations_are_bit_identical_and_input_untouched() -> None:
    lp = toy(4, seed=3)
    lp[1, 5] = -math.inf  # an impossible token stays impossible
    keep = lp.clone()
    mask = torch.zeros_like(lp)
    mask[1, [2, 5]] = 1.0
    mask[3, 9] = 1.0
    beta = torch.tensor([1.0, 2.0, 3.0, 4.0])
    beta_keep = beta.clone()
    res = kid_policy_update(lp, mask, beta)
    assert torch.equal(lp, keep) and torch.equal(beta, beta_keep)  # no in-place change
    assert res.log_probs is not lp
    assert torch.equal(res.log_probs[0], lp[0]) and torch.equal(res.log_probs[2], lp[2])
    assert res.updated.tolist() == [False, True, False, True]
    assert res.beta[0] == 1.0 and res.beta[2] == 3.0
    assert res.log_probs[1, 5] == -math.inf
    # a row whose only demonstration is impossible is not updated either
    only_dead = torch.zeros_like(lp)
    only_dead[1, 5] = 1.0
    res2 = kid_policy_update(lp, only_dead, beta)
    assert torch.equal(res2.log_probs, lp) and not bool(res2.updated.any())
    # K = 0: nothing changes
    res0 = kid_policy_update(lp, mask, beta, steps=0)
    assert torch.equal(res0.log_probs, lp)


def test_objective_maximiser_closed_form() -> None:
    """Many small Adam steps converge to argmax J: demo mass (1 + beta p) / (1 + beta)."""
    lp = toy(2, seed=4)
    mask = torch.zeros_like(lp, dtype=torch.bool)
    mask[0, :3] = True
    mask[1, 10:30] = True
    beta = torch.tensor([0.5, 4.0])
    res = kid_policy_update(lp, mask, beta, steps=400, lr=0.01, sigma=0.02)
    p = (lp.exp() * mask).sum(-1)
    got = (res.log_probs.exp() * mask).sum(-1)
    assert torch.allclose(got, optimal_demo_mass(p, beta), atol=5e-3)
    # and demonstration tokens are rescaled uniformly (relative order kept)
    ratio = (res.log_probs - lp)[0, :3]
    assert float(ratio.max() - ratio.min()) < 0.05


def test_batched_equals_per_row_and_dtype_device() -> None:
    lp = toy(5, seed=5)
    mask = torch.rand(lp.shape, generator=torch.Generator().manual_seed(0)) < 0.1
    mask[2] = False
    beta = torch.tensor([1.0, 0.5, 2.0, 1.0, 8.0])
    full = kid_policy_update(lp, mask, beta)
    for i in range(5):
        one = kid_policy_update(lp[i : i + 1], mask[i : i + 1], beta[i : i + 1])
        assert torch.allclose(one.log_probs, full.log_probs[i : i + 1], atol=1e-6)
        assert torch.allclose(one.beta, full.beta[i : i + 1])
    half = kid_policy_update(lp.to(torch.bfloat16), mask, beta)
    assert half.log_probs.dtype == torch.bfloat16
    if torch.cuda.is_available():  # pragma: no cover - CPU CI
        gpu = kid_policy_update(lp.cuda(), mask.cuda(), beta.cuda())
        assert torch.allclose(gpu.log_probs.cpu(), full.log_probs, atol=1e-5)


def test_validation() -> None:
    lp = toy(2)
    with pytest.raises(ValueError):
        kid_policy_update(lp, torch.zeros(2, 3), torch.ones(2))
    with pytest.raises(ValueError):
        kid_policy_update(lp, torch.zeros_like(lp), torch.ones(3))
    with pytest.raises(ValueError):
        kid_policy_update(lp, -torch.ones_like(lp), torch.ones(2))
