"""KID's key/value update core (informative_dialogue/kid/kv_update.py): the gradient steps on a
toy differentiable step function against a hand-written reference (closed-form gradient of the
loss, per-row and per-layer norms, running max), rows without demonstrations, K = 0 and step
size 0, batch independence, the geometric mixture's hand values, and, on a tiny real GPT-2, that
the demonstrations' mass rises while the model's parameters stay untouched."""
from __future__ import annotations

import math

import pytest
import torch

from informative_dialogue.kid.kv_update import KVUpdate, demo_log_mass, geometric_mix, kl_divergence, kv_perturbation

V = 5
SHAPES = [(2, 3, 2), (1, 3, 4)]  # per layer: (heads, T, d); the layers differ in size


def make_past(n: int, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *s, generator=g, dtype=torch.float64), torch.randn(n, *s, generator=g, dtype=torch.float64))
            for s in SHAPES]


def flat(past) -> torch.Tensor:
    """(N, F): every row's keys and values, layer after layer."""
    return torch.cat([t.flatten(1) for kv in past for t in kv], dim=1)


def weights(seed: int = 1) -> torch.Tensor:
    size = sum(2 * math.prod(s) for s in SHAPES)
    return torch.randn(size, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.3


class Toy:
    """step_fn(past) = log_softmax(flatten(past) @ W * row_scale): differentiable, rows independent."""

    def __init__(self, w: torch.Tensor, row_scale: torch.Tensor | None = None) -> None:
        self.w, self.row_scale, self.calls, self.grad_calls = w, row_scale, 0, 0

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.w
        return z if self.row_scale is None else z * self.row_scale[:, None]

    def __call__(self, past) -> torch.Tensor:
        self.calls += 1
        self.grad_calls += torch.is_grad_enabled()
        return self.logits(flat(past)).log_softmax(-1)


def hand_grad(toy: Toy, x: torch.Tensor, plain: torch.Tensor, demos: list[list[int]], kl: float) -> torch.Tensor:
    """d loss / d x for one row x (F,), by hand: z = s W^T x, p = softmax(z), m = p(D);
    d(-log m)/dz_j = p_j - p_j 1_D(j) / m; d KL(p||q)/dz_j = p_j (log p_j - log q_j - KL)."""
    scale = 1.0 if toy.row_scale is None else float(toy.row_scale[0])
    z = (x @ toy.w) * scale
    p = z.softmax(-1)
    in_d = torch.zeros(V, dtype=p.dtype)
    in_d[demos] = 1.0
    m = (p * in_d).sum()
    dz = p - p * in_d / m
    log_ratio = p.log() - plain
    dz = dz + kl * p * (log_ratio - (p * log_ratio).sum())
    return toy.w @ (dz * scale)


def split(vec: torch.Tensor) -> list:
    """(F,) -> per layer (key, value) of one row."""
    out, at = [], 0
    for s in SHAPES:
        size = math.prod(s)
        out.append((vec[at:at + size].view(s), vec[at + size:at + 2 * size].view(s)))
        at += 2 * size
    return out


def reference(toy: Toy, past, plain, row: int, demos: list[int], steps: int, eta: float, kl: float, gamma: float):
    """The module doc's update for one row, written as a plain loop (float64)."""
    x0 = flat(past)[row]
    delta = torch.zeros_like(x0)
    norms = [0.0] * len(SHAPES)
    for _ in range(steps):
        g = split(hand_grad(toy, x0 + delta, plain[row], demos, kl))
        step = []
        for layer, (gk, gv) in enumerate(g):
            norms[layer] = max(norms[layer], float(torch.cat([gk.flatten(), gv.flatten()]).norm()))
            step += [gk.flatten(), gv.flatten()]
            step[-2:] = [t * (-eta / (norms[layer] + 1e-15) ** gamma) for t in step[-2:]]
        delta = delta + torch.cat(step)
    return delta


def demos_of(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    d = max(max((len(r) for r in rows), default=1), 1)
    index = torch.zeros(len(rows), d, dtype=torch.long)
    valid = torch.zeros(len(rows), d, dtype=torch.bool)
    for i, r in enumerate(rows):
        index[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        valid[i, :len(r)] = True
    return index, valid


def run(toy: Toy, past, plain, rows, **kw) -> KVUpdate:
    index, valid = demos_of(rows)
    kw = dict(dict(steps=3, step_size=0.2, kl_scale=0.5, gamma=1.5), **kw)
    return kv_perturbation(toy, past, plain, index, valid, **kw)


def plain_of(n: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).log_softmax(-1)


DEMOS = [[1, 3], [], [0, 2, 4], [4]]


def test_one_step_with_gamma_0_is_minus_step_size_times_the_hand_gradient() -> None:
    toy, past, plain = Toy(weights()), make_past(4), plain_of(4)
    res = run(toy, past, plain, DEMOS, steps=1, step_size=0.3, gamma=0.0)
    got = flat(res.deltas)
    for row, demos in enumerate(DEMOS):
        want = -0.3 * hand_grad(toy, flat(past)[row], plain[row], demos, 0.5) if demos else torch.zeros(got.size(1), dtype=got.dtype)
        assert torch.allclose(got[row], want, atol=1e-12), row
    assert res.updated.tolist() == [True, False, True, True] and res.steps == 1


@pytest.mark.parametrize("gamma", [1.0, 1.5])
def test_k_steps_match_the_reference_loop(gamma: float) -> None:
    toy, past, plain = Toy(weights()), make_past(4), plain_of(4)
    res = run(toy, past, plain, DEMOS, steps=3, gamma=gamma)
    got = flat(res.deltas)
    for row, demos in enumerate(DEMOS):
        if demos:
            assert torch.allclose(got[row], reference(toy, past, plain, row, demos, 3, 0.2, 0.5, gamma), atol=1e-12)
    assert toy.grad_calls == 3 and toy.calls == 4  # K steps with gradients, one final call without
    # the final call's output is step_fn(past + deltas); the demo mass is read off it
    final = toy([(k + dk, v + dv) for (k, v), (dk, dv) in zip(past, res.deltas)])
    assert torch.allclose(res.log_probs, final)
    for row, demos in enumerate(DEMOS):
        want = final[row, demos].exp().sum() if demos else torch.tensor(0.0, dtype=final.dtype)
        assert torch.allclose(res.demo_mass[row], want)


def test_normalisation_is_per_row_and_per_layer() -> None:
    """gamma = 1: after one step every (row, layer) perturbation has norm step_size exactly,
    whatever the gradient's size; scaling one row's gradient leaves the other rows alone."""
    toy, past, plain = Toy(weights()), make_past(3), plain_of(3)
    rows = [[1], [2, 3], [0]]
    res = run(toy, past, plain, rows, steps=1, gamma=1.0, step_size=0.25)
    for dk, dv in res.deltas:
        norms = torch.cat([dk.flatten(1), dv.flatten(1)], 1).norm(dim=1)
        assert torch.allclose(norms, torch.full((3,), 0.25, dtype=norms.dtype))
    scaled = Toy(weights(), row_scale=torch.tensor([1.0, 7.0, 1.0], dtype=torch.float64))
    other = run(scaled, past, plain, rows, steps=2, gamma=1.5)
    base = run(toy, past, plain, rows, steps=2, gamma=1.5)
    for (k1, v1), (k2, v2) in zip(base.deltas, other.deltas):
        assert torch.equal(k1[[0, 2]], k2[[0, 2]]) and torch.equal(v1[[0, 2]], v2[[0, 2]])
        assert not torch.allclose(k1[1], k2[1])


def test_batch_independence_a_row_alone_equals_the_row_in_a_batch() -> None:
    toy, past, plain = Toy(weights()), make_past(4), plain_of(4)
    full = run(toy, past, plain, DEMOS)
    for row in range(4):
        alone = run(toy, [(k[row:row + 1], v[row:row + 1]) for k, v in past], plain[row:row + 1], [DEMOS[row]])
        assert torch.allclose(flat(alone.deltas)[0], flat(full.deltas)[row], atol=1e-12)


def test_rows_without_demonstrations_keep_zero_and_mix_returns_plain_bit_identical() -> None:
    toy, past, plain = Toy(weights()), make_past(4), plain_of(4)
    res = run(toy, past, plain, DEMOS, step_size=5.0)
    for dk, dv in res.deltas:
        assert not dk.requires_grad and dk.grad_fn is None
        assert torch.count_nonzero(dk[1]) == 0 and torch.count_nonzero(dv[1]) == 0
        assert torch.count_nonzero(dk[0]) > 0
    assert float(res.demo_mass[1]) == 0.0
    mixed = geometric_mix(res.log_probs, plain, 0.99, res.updated)
    assert torch.equal(mixed[1], plain[1]) and not torch.equal(mixed[0], plain[0])
    # no row with demonstrations at all: step_fn is never called
    toy2 = Toy(weights())
    none = run(toy2, past, plain, [[], [], [], []])
    assert toy2.calls == 0 and none.log_probs is None and not none.updated.any()
    assert all(torch.count_nonzero(t) == 0 for kv in none.deltas for t in kv)


def test_k_0_and_step_size_0_leave_the_cache_alone() -> None:
    toy, past, plain = Toy(weights()), make_past(4), plain_of(4)
    zero_k = run(toy, past, plain, DEMOS, steps=0)
    assert toy.calls == 0 and zero_k.log_probs is None and not zero_k.updated.any() and zero_k.steps == 0
    # the mass is the plain distribution's where nothing is updated
    assert torch.allclose(zero_k.demo_mass[0], plain[0, [1, 3]].exp().sum())
    zero_eta = run(toy, past, plain, DEMOS, step_size=0.0)
    assert zero_eta.updated.tolist() == [True, False, True, True]
    assert all(torch.count_nonzero(t) == 0 for kv in zero_k.deltas + zero_eta.deltas for t in kv)
    assert torch.allclose(zero_eta.log_probs, toy(past))


def test_the_demo_mass_rises_with_the_update() -> None:
    toy, past, plain = Toy(weights()), make_past(4), plain_of(4)
    before = demo_log_mass(toy(past), *demos_of(DEMOS)).exp()
    res = run(toy, past, plain, DEMOS, steps=3, step_size=0.5, kl_scale=0.01)
    for row in (0, 2, 3):
        assert float(res.demo_mass[row]) > float(before[row]) + 1e-3


def test_the_kl_term_pulls_towards_the_plain_distribution() -> None:
    """KL(p_pert || p_plain): with plain = the current distribution and no demonstration pull
    possible, the KL gradient is 0; with a far plain target it is not, and it points towards it."""
    toy, past = Toy(weights()), make_past(1)
    current = toy(past).detach()
    index, valid = demos_of([[0, 1, 2, 3, 4]])  # every token: -log mass = 0, no pull
    same = kv_perturbation(toy, past, current, index, valid, steps=1, step_size=0.1, kl_scale=1.0, gamma=0.0)
    assert float(flat(same.deltas).abs().max()) < 1e-12
    target = torch.tensor([[0.0, -6.0, -6.0, -6.0, -6.0]], dtype=torch.float64).log_softmax(-1)
    moved = kv_perturbation(toy, past, target, index, valid, steps=3, step_size=0.5, kl_scale=1.0, gamma=0.0)
    assert float(kl_divergence(moved.log_probs, target)) < float(kl_divergence(current, target))


def test_demo_log_mass_counts_a_token_once_and_kl_divergence_values() -> None:
    lp = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).log()
    index = torch.tensor([[2, 0, 2, 3]])
    valid = torch.tensor([[True, True, True, False]])
    assert torch.allclose(demo_log_mass(lp, index, valid).exp(), torch.tensor([0.4]))
    assert demo_log_mass(lp, index, torch.zeros_like(valid)).item() == float("-inf")
    p, q = torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([[0.25, 0.25, 0.5]])
    assert torch.allclose(kl_divergence(p.log(), q.log()), torch.tensor([math.log(2.0)]))  # 0 * log 0 = 0


def test_geometric_mix_hand_values() -> None:
    a = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]]).log()
    b = torch.tensor([[0.1, 0.1, 0.8], [0.5, 0.25, 0.25]]).log()
    both = torch.tensor([True, True])
    assert torch.allclose(geometric_mix(a, b, 1.0, both), a, atol=1e-6)
    assert torch.allclose(geometric_mix(a, b, 0.0, both), b, atol=1e-6)
    g = (a.exp() * b.exp()).sqrt()
    assert torch.allclose(geometric_mix(a, b, 0.5, both).exp(), g / g.sum(-1, keepdim=True), atol=1e-6)
    w = 0.99
    g = a.exp() ** w * b.exp() ** (1 - w)
    assert torch.allclose(geometric_mix(a, b, w, both).exp(), g / g.sum(-1, keepdim=True), atol=1e-6)
    one = geometric_mix(a, b, 0.5, torch.tensor([False, True]))
    assert torch.equal(one[0], b[0]) and not torch.equal(one[1], b[1])
    # -inf (a banned token) stays -inf, no NaN, at the end points too
    a_ban = a.clone()
    a_ban[0, 1] = float("-inf")
    for w in (0.0, 0.5, 1.0):
        out = geometric_mix(a_ban, b, w, both)
        assert not out.isnan().any()
    assert geometric_mix(a_ban, b, 0.5, both)[0, 1] == float("-inf")
    with pytest.raises(ValueError, match="weight"):
        geometric_mix(a, b, 1.5, both)


def test_bad_arguments() -> None:
    toy, past, plain = Toy(weights()), make_past(2), plain_of(2)
    index, valid = demos_of([[1], [2]])
    with pytest.raises(ValueError, match="demo_index"):
        kv_perturbation(toy, past, plain, index[:1], valid[:1], steps=1, step_size=0.1, kl_scale=0.0, gamma=1.0)
    with pytest.raises(ValueError, match="rows on dim 0"):
        kv_perturbation(toy, make_past(3), plain, index, valid, steps=1, step_size=0.1, kl_scale=0.0, gamma=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        kv_perturbation(toy, past, plain, index, valid, steps=1, step_size=-0.1, kl_scale=0.0, gamma=1.0)


def test_tiny_gpt2_demo_mass_rises_and_parameters_stay_untouched() -> None:
    transformers = pytest.importorskip("transformers")
    from informative_dialogue.kid.hf_kv_decoding import CausalLMStepper

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stepper = CausalLMStepper(model)
    ids = torch.randint(1, 40, (3, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = stepper.new_cache()
        plain = stepper.step(ids, cache, None, torch.arange(6).expand(3, 6))
        past = [(k[..., :-1, :].clone(), v[..., :-1, :].clone()) for k, v in stepper.tensors(cache)]

        def step_fn(p):
            return stepper.step(ids[:, -1:], stepper.new_cache(p), None, torch.full((3, 1), 5))

        index, valid = demos_of([[3, 7, 11], [20], []])
        res = kv_perturbation(step_fn, past, plain, index, valid, steps=3, step_size=0.05, kl_scale=0.01, gamma=1.5)
    mass = demo_log_mass(plain, index, valid).exp()
    assert float(res.demo_mass[0]) > float(mass[0]) and float(res.demo_mass[1]) > float(mass[1])
    assert torch.equal(res.demo_mass[2], mass[2])
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(past[0][0], stepper.tensors(cache)[0][0][..., :-1, :])  # the input past is not modified
