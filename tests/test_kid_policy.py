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
    # rows 1, 2 reach the controller's fixed point: beta stops moving, KL constant inside the
    # band [sigma/2, 2 sigma] (here 0.0213 and 0.0180)
    assert bool((last[:, 1:] >= sigma / 2).all()) and bool((last[:, 1:] <= 2 * sigma).all())
    assert torch.equal(last[0], last[-1])
    # row 0 cannot get there: K Adam steps of size lr move its demonstration logits by about
    # 2 K lr = 1.2 nats against the rest, whose KL (0.0069) is below sigma/2 whatever beta is, so
    # beta halves down to its floor: the step size, not sigma, sets the strength (issue #16)
    assert float(beta[0]) == pytest.approx(1e-6)
    p = float(lp[0].exp()[mask[0]].sum())
    tilt = 2 * 3 * 0.2
    tilt_kl = math.log(p * math.exp(tilt) + 1 - p) - p * tilt  # KL(pi || pi tilted by 1.2 on D)
    assert float(last[-1, 0]) == pytest.approx(tilt_kl, rel=2e-3)
    assert float(last[-1, 0]) < sigma / 2


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


def reference_update(lp: torch.Tensor, mask: torch.Tensor, beta: torch.Tensor, steps: int, lr: float,
                     sigma: float) -> tuple:
    """Algorithm 1 written independently, one row at a time: autograd through Eq. 3 with the
    paper's KL(pi || pi*), ``torch.optim.Adam`` (maximize) for the K steps, then the beta rule."""
    outs, kls, betas = [], [], []
    for r in range(lp.size(0)):
        log_pi = lp[r].double().log_softmax(-1)
        if not bool(mask[r].any()):
            outs.append(lp[r].double())
            kls.append(0.0)
            betas.append(float(beta[r]))
            continue
        theta = torch.nn.Parameter(log_pi.clone())
        opt = torch.optim.Adam([theta], lr=lr, betas=(0.9, 0.999), eps=1e-8, maximize=True)
        for _ in range(steps):
            opt.zero_grad()
            log_star = theta.log_softmax(-1)
            gain = torch.logsumexp(log_star[mask[r]], 0)  # log E_pi[(pi*/pi) R] = log pi*(D)
            kl = (log_pi.exp() * (log_pi - log_star)).sum()  # KL(pi || pi*)
            (gain - float(beta[r]) * kl).backward()
            opt.step()
        new = theta.detach().log_softmax(-1)
        kl = float((log_pi.exp() * (log_pi - new)).sum())
        b = float(beta[r])
        b = 2 * b if kl >= 2 * sigma else b / 2 if kl <= sigma / 2 else b
        outs.append(new)
        kls.append(kl)
        betas.append(min(max(b, 1e-6), 1e6))
    return torch.stack(outs), torch.tensor(kls, dtype=torch.float64), torch.tensor(betas)


@pytest.mark.parametrize("steps,lr,sigma", [(3, 0.1, 0.02), (5, 0.3, 0.05), (1, 0.05, 0.001)])
def test_update_equals_autograd_adam_reference(steps: int, lr: float, sigma: float) -> None:
    """log pi*, KL(pi || pi*) and the next beta equal the independent reference (catches a
    reversed KL direction in the gradient or in the reported KL, a wrong beta rule, ...)."""
    lp = toy(5, 30, seed=11)
    g = torch.Generator().manual_seed(12)
    mask = torch.rand(lp.shape, generator=g) < 0.15
    mask[3] = False  # a row without demonstrations
    mask[0, :2] = True
    beta = torch.tensor([0.3, 1.0, 3.0, 1.0, 0.05])
    res = kid_policy_update(lp, mask, beta, steps=steps, lr=lr, sigma=sigma)
    ref_lp, ref_kl, ref_beta = reference_update(lp, mask, beta, steps, lr, sigma)
    assert torch.allclose(res.log_probs.double(), ref_lp, atol=5e-6, rtol=0)
    assert torch.allclose(res.kl.double(), ref_kl, rtol=2e-3, atol=1e-8)
    assert torch.equal(res.beta, ref_beta)
    assert bool((res.kl[[0, 1, 2, 4]] > 0).all())
    # the KL is the paper's direction: recomputed from pi and pi*, not KL(pi* || pi)
    pi = lp.double().exp()
    forward = (pi * (lp.double() - res.log_probs.double())).sum(-1)
    reverse = (res.log_probs.double().exp() * (res.log_probs.double() - lp.double())).sum(-1)
    assert torch.allclose(res.kl.double(), forward, rtol=1e-3, atol=1e-7)
    assert not torch.allclose(res.kl.double()[[0, 1, 2, 4]], reverse[[0, 1, 2, 4]], rtol=1e-2)
