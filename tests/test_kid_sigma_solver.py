"""KID's sigma-solver (informative_dialogue/kid/sigma_solver.py): the policy of largest
demonstration mass with KL(pi || pi*) <= sigma, in closed form, for all rows at once."""
from __future__ import annotations

import math

import pytest
import torch

from informative_dialogue.kid.policy_update import optimal_demo_mass
from informative_dialogue.kid.sigma_solver import pairs_to_index, sigma_solve

DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def toy(n: int = 6, v: int = 300, seed: int = 0, scale: float = 3.0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, v, generator=g, dtype=torch.float64) * scale).log_softmax(-1).to(dtype)


def demos(n: int, v: int, width: int = 6, seed: int = 1) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, v, (n, width), generator=g), torch.rand(n, width, generator=g) < 0.8


def dense(index: torch.Tensor, valid: torch.Tensor, v: int) -> torch.Tensor:
    mask = torch.zeros(index.size(0), v, dtype=torch.bool)
    for r in range(index.size(0)):
        mask[r, index[r][valid[r]]] = True
    return mask


def kl_ref(lp: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """KL(pi || pi*) per row in float64, recomputed from the two log-prob tensors."""
    lp, new = lp.double().log_softmax(-1), new.double()
    pi = lp.exp()
    return torch.where(pi > 0, pi * (lp - new), torch.zeros_like(pi)).sum(-1)


def mass(lp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (lp.double().exp() * mask).sum(-1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sigma", [0.02, 0.5, 3.0])
def test_reaches_sigma_and_the_closed_form_shape(sigma: float, dtype, device: str) -> None:
    lp = toy(dtype=dtype).to(device)
    index, valid = demos(6, 300)
    mask = dense(index, valid, 300)
    res = sigma_solve(lp, sigma, index.to(device), valid.to(device))
    out = res.log_probs.cpu()
    assert out.dtype == dtype and res.log_probs.device == lp.device
    assert res.updated.all()
    kl = kl_ref(lp.cpu(), out)
    tol = 1e-4 if dtype == torch.float32 else 2e-9  # the solver aims at sigma (1 - 1e-9)
    # KL(pi || pi*) = sigma on every row (recomputed from the output, not the solver's own number)
    assert torch.allclose(kl, torch.full_like(kl, sigma), rtol=tol, atol=0), kl
    assert torch.allclose(res.kl.cpu().double(), kl, rtol=1e-5, atol=0)
    assert torch.allclose(out.double().exp().sum(-1), torch.ones(6, dtype=torch.float64), atol=1e-5)
    # two-factor rescaling: log pi* - log pi is one constant on D and another one off D
    diff = (out.double() - lp.cpu().double())
    for r in range(6):
        inside, outside = diff[r][mask[r]], diff[r][~mask[r]]
        assert float(inside.max() - inside.min()) < 1e-5 and float(outside.max() - outside.min()) < 1e-5
        assert float(inside.mean() - outside.mean()) == pytest.approx(float(res.shift[r]), rel=1e-4)
    assert torch.allclose(res.demo_mass.cpu().double(), mass(out, mask), rtol=1e-5)
    assert bool((mass(out, mask) > mass(lp.cpu(), mask)).all())


def test_never_exceeds_sigma_and_beta_takes_the_unconstrained_optimum() -> None:
    lp = toy(8, 200, seed=2)
    index, valid = demos(8, 200, width=10, seed=3)
    mask = dense(index, valid, 200)
    p = mass(lp, mask)
    for sigma in (1e-6, 1e-3, 0.02, 0.3, 2.0, 20.0):
        res = sigma_solve(lp, sigma, index, valid)
        assert bool((kl_ref(lp, res.log_probs) <= sigma * (1 + 1e-9)).all()), sigma
    # beta: rows whose maximiser (1 + beta p) / (1 + beta) has KL < sigma take it, the others sit on sigma
    sigma = 0.05
    beta = torch.tensor([0.01, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5], dtype=torch.float64)
    res = sigma_solve(lp, sigma, index, valid, beta=beta)
    free = optimal_demo_mass(p, beta)
    free_kl = p * torch.log(p / free) + (1 - p) * torch.log((1 - p) / (1 - free))
    kl = kl_ref(lp, res.log_probs)
    bound = free_kl >= sigma
    assert 0 < int(bound.sum()) < 8  # both kinds of rows occur
    assert torch.allclose(kl[bound], torch.full_like(kl[bound], sigma), rtol=1e-9)
    assert torch.allclose(mass(res.log_probs, mask)[~bound], free[~bound], rtol=1e-9)
    assert torch.allclose(kl[~bound], free_kl[~bound], rtol=1e-7)
    # beta = 0 is the default (no penalty: the trust region alone)
    no_penalty = sigma_solve(lp, sigma, index, valid, beta=0.0).log_probs
    assert torch.equal(no_penalty, sigma_solve(lp, sigma, index, valid).log_probs)


def test_rows_without_demonstrations_are_bit_identical_and_input_untouched() -> None:
    lp = toy(6, 50, seed=4, dtype=torch.float32)
    lp[1, 7] = -math.inf
    lp[4] = -math.inf
    lp[4, [1, 5, 9]] = torch.tensor([-1.0, -2.0, -0.5])  # row 4: all its mass on its demonstrations
    index = torch.tensor([[3, 7, 0], [7, 2, 2], [0, 0, 0], [7, 0, 0], [1, 5, 9], [9, 3, 0]])
    valid = torch.tensor([[False] * 3, [True, True, True], [False] * 3, [True, False, False],
                          [True] * 3, [True, True, False]])
    lp[3, 7] = -math.inf  # row 3's only demonstration is impossible
    keep = lp.clone()
    res = sigma_solve(lp, 0.1, index, valid)
    assert torch.equal(lp, keep) and res.log_probs is not lp
    assert res.updated.tolist() == [False, True, False, False, False, True]
    for r in (0, 2, 3, 4):
        assert torch.equal(res.log_probs[r], lp[r])  # bit for bit
        assert res.kl[r] == 0 and res.shift[r] == 0
    assert res.log_probs[1, 7] == -math.inf
    # all rows without demonstrations: a copy equal to the input
    none = sigma_solve(lp, 0.1, index, torch.zeros_like(valid))
    assert torch.equal(none.log_probs, lp) and none.log_probs is not lp and not none.updated.any()


def test_demo_mass_rises_monotonically_with_sigma() -> None:
    lp = toy(5, 120, seed=5)
    index, valid = demos(5, 120, seed=6)
    sigmas = [1e-4, 1e-3, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0]
    masses = torch.stack([sigma_solve(lp, s, index, valid).demo_mass.double() for s in sigmas])
    assert bool((masses[1:] > masses[:-1]).all())
    assert bool((masses[0] > mass(lp, dense(index, valid, 120))).all())


@pytest.mark.parametrize("demo_set", [[1], [0, 2]])
@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_closed_form_equals_brute_force_on_the_simplex(demo_set: list, beta: float) -> None:
    """Dense grid over every pi* of a 3-token vocabulary: no feasible point beats the solver."""
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    sigma = 0.05
    d = torch.zeros(3, dtype=torch.bool)
    d[demo_set] = True
    res = sigma_solve(pi.log().unsqueeze(0), sigma, torch.tensor([demo_set]), beta=beta)
    star = res.log_probs[0].exp()

    def objective(points: torch.Tensor) -> torch.Tensor:
        kl = (pi * (pi.log() - points.log())).sum(-1)
        value = points[:, d].sum(-1).log() - beta * kl
        return torch.where((kl <= sigma) & (points > 0).all(-1), value, torch.full_like(value, -math.inf))

    # brute force: a 2-D grid over the simplex, then four finer grids around the best point
    centre, half = torch.tensor([0.5, 0.5], dtype=torch.float64), 0.5
    for _ in range(5):
        a = torch.linspace(-half, half, 401, dtype=torch.float64)
        x, y = torch.meshgrid(centre[0] + a, centre[1] + a, indexing="ij")
        grid = torch.stack([x, y, 1 - x - y], dim=-1).reshape(-1, 3)
        values = objective(grid)
        best = grid[values.argmax()]
        centre, half = best[:2], half / 8
    star_kl = float(kl_ref(pi.log().unsqueeze(0), res.log_probs)[0])
    assert star_kl <= sigma * (1 + 1e-9)
    solver = float(star[d].sum().log()) - beta * star_kl
    assert float(values.max()) <= solver + 1e-12  # never beaten
    assert solver - float(values.max()) < 5e-5  # and the grid comes close
    # at beta = 0 the objective is flat along the KL boundary to first order: a looser match
    assert torch.allclose(best, star, atol=5e-3 if beta == 0 else 1e-5), (best, star)


def test_duplicates_padding_and_the_other_input_forms_agree() -> None:
    lp = toy(4, 60, seed=7, dtype=torch.float32)
    clean = torch.tensor([[3, 9, 12], [5, 6, 0], [40, 0, 0], [0, 0, 0]])
    clean_valid = torch.tensor([[True, True, True], [True, True, False], [True, False, False], [False] * 3])
    ref = sigma_solve(lp, 0.2, clean, clean_valid)
    dup = torch.tensor([[12, 3, 9, 3, 3, 12], [6, 5, 6, 6, 1, 2], [40, 40, 40, 40, 40, 40], [1, 2, 3, 4, 5, 6]])
    dup_valid = torch.tensor([[True] * 6, [True, True, True, True, False, False], [True] * 6, [False] * 6])
    got = sigma_solve(lp, 0.2, dup, dup_valid)
    assert torch.equal(got.log_probs, ref.log_probs) and torch.equal(got.updated, ref.updated)
    assert torch.equal(got.kl, ref.kl)
    # the dense mask form (as kid_policy_update takes it) and flat (row, token) pairs
    mask = dense(clean, clean_valid, 60)
    assert torch.equal(sigma_solve(lp, 0.2, demo_mask=mask).log_probs, ref.log_probs)
    assert torch.equal(sigma_solve(lp, 0.2, demo_mask=mask.float() * 0.5).log_probs, ref.log_probs)
    rows, toks = mask.nonzero(as_tuple=True)
    perm = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(0))
    index, valid = pairs_to_index(torch.cat([rows[perm], rows[:2]]), torch.cat([toks[perm], toks[:2]]), 4)
    assert index.shape == (4, 5) and valid.sum(-1).tolist() == [5, 2, 1, 0]
    assert torch.equal(sigma_solve(lp, 0.2, index, valid).log_probs, ref.log_probs)
    # demo_valid defaults to every slot
    assert torch.equal(sigma_solve(lp[:1], 0.2, clean[:1]).log_probs, ref.log_probs[:1])


def test_batch_of_one_equals_its_row_in_a_batch() -> None:
    lp = toy(7, 80, seed=8)
    index, valid = demos(7, 80, seed=9)
    valid[2] = False
    full = sigma_solve(lp, 0.03, index, valid)
    for r in range(7):
        one = sigma_solve(lp[r : r + 1], 0.03, index[r : r + 1], valid[r : r + 1])
        assert torch.allclose(one.log_probs, full.log_probs[r : r + 1], rtol=0, atol=1e-8)
        assert one.updated.tolist() == [bool(full.updated[r])]


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_demonstration_mass(dtype) -> None:
    """pi(D) close to 1 (outside mass 1e-12 .. 1e-30) and close to 0 (1e-40 .. 1e-300)."""
    v = 20
    rows = []
    for log_out in (-27.6, -45.0, -69.0):  # outside mass e^log_out, D = {0} holds the rest
        r = torch.full((v,), log_out - math.log(v - 1), dtype=torch.float64)
        r[0] = math.log1p(-math.exp(log_out))
        rows.append(r)
    tiny = (-92.0, -300.0, -690.0) if dtype == torch.float64 else (-92.0, -300.0, -1000.0)
    for log_in in tiny:  # D = {0} holds e^log_in
        r = torch.full((v,), -math.log(v - 1), dtype=torch.float64)
        r[0] = log_in
        rows.append(r)
    lp = torch.stack(rows).to(dtype)
    index = torch.zeros(len(rows), 1, dtype=torch.long)
    sigma = 0.02
    res = sigma_solve(lp, sigma, index)
    assert res.updated.all() and bool(torch.isfinite(res.log_probs).all())
    kl = kl_ref(lp, res.log_probs)
    assert bool((kl <= sigma * (1 + 1e-4)).all())
    assert torch.allclose(kl, torch.full_like(kl, sigma), rtol=1e-4), kl
    assert torch.allclose(res.kl.double(), torch.full_like(kl, sigma), rtol=1e-6)
    # near-1 rows: the outside mass shrinks by the factor KL ~ q (delta - 1) asks for
    # near-0 rows: the demonstration mass rises to about 1 - e^-sigma
    near0 = res.demo_mass[3:].double()
    assert torch.allclose(near0, torch.full_like(near0, -math.expm1(-sigma)), rtol=1e-3)
    # all the mass already on D: nothing to do (bit-identical)
    full = torch.full((1, v), -math.inf, dtype=dtype)
    full[0, 0] = 0.0
    done = sigma_solve(full, sigma, index[:1])
    assert torch.equal(done.log_probs, full) and not done.updated.any()


def test_half_precision_and_validation() -> None:
    lp = toy(3, 40, seed=10, dtype=torch.bfloat16)
    index, valid = demos(3, 40, seed=11)
    res = sigma_solve(lp, 0.1, index, valid)
    assert res.log_probs.dtype == torch.bfloat16
    assert torch.allclose(kl_ref(lp, res.log_probs), torch.full((3,), 0.1, dtype=torch.float64), rtol=0.1)
    with pytest.raises(ValueError):
        sigma_solve(lp, 0.0, index, valid)
    with pytest.raises(ValueError):
        sigma_solve(lp, 0.1)  # no demonstrations given
    with pytest.raises(ValueError):
        sigma_solve(lp, 0.1, index, valid, demo_mask=torch.zeros(3, 40, dtype=torch.bool))
    with pytest.raises(ValueError):
        sigma_solve(lp, 0.1, torch.full((3, 2), 40))  # token id out of range
    with pytest.raises(ValueError):
        sigma_solve(lp, 0.1, index[:2], valid[:2])
    with pytest.raises(ValueError):
        sigma_solve(lp, 0.1, demo_mask=-torch.ones(3, 40))
    with pytest.raises(ValueError):
        sigma_solve(lp, 0.1, index, valid, beta=-1.0)
    # an out-of-range id in a padding slot is ignored
    bad = index.clone()
    bad[~valid] = 10**6
    assert torch.equal(sigma_solve(lp, 0.1, bad, valid).log_probs, res.log_probs)


@pytest.mark.parametrize("sigma", [1e-6, 0.02, 2.0])
def test_newton_converges_in_a_few_steps_over_the_whole_range(sigma: float) -> None:
    """pi(D) from 1e-300 to 1 - 1e-13 (one row each): 8 Newton steps reach sigma everywhere."""
    log_in = -torch.logspace(-13, math.log10(690.0), 60, dtype=torch.float64)
    v = 9
    lp = torch.empty(len(log_in), v, dtype=torch.float64)
    lp[:, 0] = log_in
    lp[:, 1:] = (torch.log(-torch.expm1(log_in)) - math.log(v - 1)).unsqueeze(1)
    res = sigma_solve(lp, sigma, torch.zeros(len(log_in), 1, dtype=torch.long), max_iter=8)
    assert res.updated.all()
    assert torch.allclose(res.kl.double(), torch.full_like(log_in, sigma), rtol=1e-6)
    kl = kl_ref(lp, res.log_probs)
    assert torch.allclose(kl, torch.full_like(kl, sigma), rtol=1e-6 if sigma > 1e-5 else 1e-4)
