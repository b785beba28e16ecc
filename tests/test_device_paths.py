"""Every tensor path on every device: the KI hinge loss, the ND losses and the fused
soft-unlikelihood kernel (with the device's block size), KID's Adam policy update, the
sigma-solver, a KIDCore step, the per-example sampling draw and (when present) the KV-cache
perturbation, plus the faiss
GPU/CPU choice of the KI index and the KID dense retriever and their torch encoders.

Each test takes the ``device`` fixture (tests/conftest.py): it runs on the CPU, and on CUDA
where torch sees a GPU (elsewhere the cuda case is skipped with the reason "no CUDA";
``REQUIRE_CUDA=1`` turns that into a failure, as ``benchmarks/gpu_check.sh`` runs it). The
references are computed independently (explicit formulas, float64, on the CPU unless said
otherwise), so a wrong formula fails on the CPU too; a tensor left on the CPU in a CUDA branch
can only be caught by the cuda cases, i.e. on a machine with a GPU.

Tests named ``*_branch_*`` check which branch the code *takes* when faiss reports GPUs, by
monkeypatching faiss on the CPU: they are branch tests, not GPU runs.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

TOY_TRIE = Path(__file__).parent / "data" / "kid_toy_trie.jsonl"
TOY_VOCAB = ["<s>", "<pad>", "</s>", "<unk>", "the", "car", "##s", "engine", "road", "trip", "piston",
             "fuel", "gas", "##oline", "dog", "loyal", "pet", "bark", ".", "is", "cylinder", "refinery", "weather"]


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """``actual`` (any device, float32) against a float64 reference, on the CPU."""
    torch.testing.assert_close(actual.detach().cpu().double(), expected.detach().cpu().double(), rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------ KI hinge loss
def _ki_reference(states, valid, knowledge, w1, b1, w2, b2, table, margin):
    """Eq. 2-3 token by token in float64: the hinge averaged over every valid negative (tokens
    of other sentences with another id): the expectation of the sampled loss. Returns
    ``(loss, per-token margins pos - neg)``."""
    tokens = [(b, s) for b in range(states.size(0)) for s in range(states.size(1))
              if valid[b, s] and knowledge[b, s] != 0]

    def f1(x):
        return F.normalize(x @ w1.T + b1, dim=-1)

    def f2(i):
        return F.normalize(table[i] @ w2.T + b2, dim=-1)

    loss, gaps = states.new_zeros(()), []
    for b, s in tokens:
        kid = int(knowledge[b, s])
        negs = [int(knowledge[c, t]) for c, t in tokens if c != b and int(knowledge[c, t]) != kid]
        h = f1(states[b, s])
        pos = h @ f2(kid)
        neg = torch.stack([h @ f2(n) for n in negs]).mean()
        gaps.append(float((pos - neg).detach()))
        loss = loss + torch.clamp(margin - pos + neg, min=0.0)
    return loss, gaps


def test_ki_hinge_loss_forward_and_backward_match_float64_reference(device) -> None:
    from informative_dialogue.ki.loss import ki_loss

    g = torch.Generator().manual_seed(0)
    B, S, C, Dk, d = 3, 4, 6, 5, 3
    states64 = torch.randn(B, S, C, generator=g, dtype=torch.float64)
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)  # padding both sides
    # every token's negatives share one id (row 0: 7; rows 1, 2: 5), so the sampled loss is exact
    knowledge = torch.tensor([[5, 0, 5, 0], [7, 0, 7, 7], [0, 7, 0, 7]])
    table64 = torch.randn(10, Dk, generator=g, dtype=torch.float64)
    w1, b1 = torch.randn(d, C, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    w2, b2 = torch.randn(d, Dk, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    ref_params = [t.clone().requires_grad_() for t in (states64, w1, b1, w2, b2)]
    _, gaps = _ki_reference(*ref_params[:1], valid, knowledge, *ref_params[1:], table64, 0.0)
    ordered = sorted(gaps)
    margin = (ordered[3] + ordered[4]) / 2  # 4 of the 7 tokens inside the margin, 3 outside
    ref_loss, _ = _ki_reference(*ref_params[:1], valid, knowledge, *ref_params[1:], table64, margin)
    ref_loss.backward()

    f1, f2 = torch.nn.Linear(C, d).to(device), torch.nn.Linear(Dk, d).to(device)
    with torch.no_grad():
        for lin, w, b in ((f1, w1, b1), (f2, w2, b2)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
    states = states64.float().to(device).requires_grad_()
    table = table64.float().to(device)
    loss, used, labelled = ki_loss(states, valid.to(device), knowledge.to(device), valid.to(device), f1, f2,
                                   lambda ids: table[ids], margin, num_negatives=3)
    loss.backward()
    assert loss.device.type == device.type and states.grad.device.type == device.type
    assert (used, labelled) == (7, 7)
    _close(loss, ref_loss)
    for got, ref in ((states.grad, ref_params[0]), (f1.weight.grad, ref_params[1]), (f1.bias.grad, ref_params[2]),
                     (f2.weight.grad, ref_params[3]), (f2.bias.grad, ref_params[4])):
        _close(got, ref.grad)
    assert float(states.grad[0, 3].abs().sum()) == 0.0  # padding gets no gradient


# ------------------------------------------------------------------------------ ND losses
DOCUMENTED_BLOCK = {"cpu": 1 << 17, "cuda": 1 << 22}  # elements per block (soft_unlikelihood docstring)


def test_soft_unlikelihood_block_size_is_documented_per_device(device) -> None:
    from informative_dialogue.nd import soft_unlikelihood as su

    assert (su.SOFT_UL_CHUNK_ELEMENTS, su.SOFT_UL_CHUNK_ELEMENTS_GPU) == (1 << 17, 1 << 22)
    for vocab in (1024, 14696, 300_000):
        rows = su._rows_per_block(torch.empty(2, vocab, device=device), None)
        assert rows == max(1, DOCUMENTED_BLOCK[device.type] // vocab)
        assert su._rows_per_block(torch.empty(2, vocab, device=device), 4096) == max(1, 4096 // vocab)


def test_soft_unlikelihood_block_size_branch_for_non_cpu_tensors() -> None:
    """Branch test on the CPU: a tensor on a non-CPU device (``meta``) gets the GPU block size."""
    from informative_dialogue.nd import soft_unlikelihood as su

    assert su._rows_per_block(torch.empty(2, 1024, device="meta"), None) == (1 << 22) // 1024
    assert su._rows_per_block(torch.empty(2, 1024), None) == (1 << 17) // 1024


def _nd_inputs(device, vocab: int = 1024, seed: int = 0):
    """Student and teacher logits ``(2, T, V)`` on ``device`` with 2.5 blocks of rows at the
    device's block size, a mask whose second block is all padding, and rows where the student's
    top token has p > 1/2 and p > 1 - eps (the kernel's two special branches)."""
    rows_per_block = DOCUMENTED_BLOCK[device.type] // vocab
    n = rows_per_block * 5 // 2
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, vocab, generator=g)
    z[::7, 3] += 10.0  # p ~ 0.93
    # 1 - p far below eps = 1e-6 at t = 1 and 2: floored (float32 log-probabilities cannot
    # resolve 1 - p between about 1e-7 and 1e-3 at large logits, in the kernel or anywhere)
    z[1::11, 5] += 60.0
    zt = torch.randn(n, vocab, generator=g) * 2.0
    mask = torch.rand(n, generator=g) > 0.1
    mask[rows_per_block:2 * rows_per_block] = False
    shape = (2, n // 2, vocab)
    return (z.view(shape).to(device), zt.view(shape).to(device), mask.view(shape[:2]).to(device), rows_per_block)


def _block_spy(monkeypatch):
    from informative_dialogue.nd import soft_unlikelihood as su

    calls = []
    real = su._soft_ul_block

    def spy(s, *args, **kwargs):
        calls.append((s.shape[0], s.device.type))
        return real(s, *args, **kwargs)

    monkeypatch.setattr(su, "_soft_ul_block", spy)
    return calls


def _soft_ul_reference(z, zt, mask, temperature, eps=1e-6):
    """L_pred (Eq. 6-7) as the composed float64 expression: ``-sum q log(max(1 - p, eps))``."""
    p = torch.softmax(z / temperature, -1)
    q = torch.softmax(zt / temperature, -1)
    return -(q * torch.log((1.0 - p).clamp_min(eps))).sum(-1).mul(mask).sum()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_soft_unlikelihood_kernel_matches_unfused_reference(device, temperature, monkeypatch) -> None:
    from informative_dialogue.nd.soft_unlikelihood import soft_unlikelihood

    z, zt, mask, rows_per_block = _nd_inputs(device)
    calls = _block_spy(monkeypatch)
    student = z.clone().requires_grad_()
    value = soft_unlikelihood(student, zt, mask, temperature=temperature)
    value.backward()
    # the device's documented block size; the all-padding second block is skipped
    n = z.shape[0] * z.shape[1]
    assert calls == [(rows_per_block, device.type), (n - 2 * rows_per_block, device.type)]
    assert value.device.type == device.type and student.grad.device.type == device.type

    ref_z = z.detach().double().requires_grad_()  # the reference on the same device, float64
    ref = _soft_ul_reference(ref_z, zt.double(), mask.double(), temperature)
    ref.backward()
    _close(value, ref, rtol=1e-5)
    scale = float(ref_z.grad.abs().max())
    _close(student.grad, ref_z.grad, rtol=1e-4, atol=1e-6 * scale)
    assert float(student.grad[~mask].abs().sum()) == 0.0


def _ls_nll_reference(lprobs, target, smoothing, ignore_index):
    """fairseq's label-smoothed NLL, written out: ``(1 - eps - eps_i) nll + eps_i smooth``."""
    pad = target.eq(ignore_index)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).masked_fill(pad, 0.0).sum()
    smooth = -lprobs.sum(-1).masked_fill(pad, 0.0).sum()
    eps_i = smoothing / (lprobs.size(-1) - 1)
    return (1.0 - smoothing - eps_i) * nll + eps_i * smooth, nll


@pytest.mark.parametrize("overwrite_teacher", [False, True])
def test_fused_mle_and_soft_unlikelihood_matches_the_two_terms_apart(device, overwrite_teacher, monkeypatch) -> None:
    from informative_dialogue.nd.soft_unlikelihood import mle_and_soft_unlikelihood

    z, zt, mask, rows_per_block = _nd_inputs(device, seed=1)
    pad, alpha, smoothing = 1, 0.3, 0.1
    g = torch.Generator().manual_seed(2)
    target = torch.randint(4, z.size(-1), mask.shape, generator=g).to(device).masked_fill(~mask, pad)
    calls = _block_spy(monkeypatch)
    student = z.clone().requires_grad_()
    teacher = zt.clone()
    weighted, mle, nll, pred = mle_and_soft_unlikelihood(student.log_softmax(-1), target, teacher, alpha, smoothing,
                                                         pad, overwrite_teacher=overwrite_teacher)
    weighted.backward()
    assert calls[0] == (rows_per_block, device.type) and len(calls) == 2
    assert weighted.device.type == device.type and student.grad.device.type == device.type

    ref_z = z.detach().double().requires_grad_()
    ref_mle, ref_nll = _ls_nll_reference(ref_z.log_softmax(-1), target, smoothing, pad)
    ref_pred = _soft_ul_reference(ref_z, zt.double(), mask.double(), 1.0)
    ref = (1 - alpha) * ref_mle + alpha * ref_pred
    ref.backward()
    for got, want in ((weighted, ref), (mle, ref_mle), (nll, ref_nll), (pred, ref_pred)):
        _close(got, want, rtol=1e-5)
    _close(student.grad, ref_z.grad, rtol=1e-4, atol=1e-6 * float(ref_z.grad.abs().max()))


def test_hard_unlikelihood_and_mrse_match_float64_references(device) -> None:
    from informative_dialogue.nd.losses import hard_unlikelihood, mrse

    g = torch.Generator().manual_seed(3)
    z64 = torch.randn(2, 5, 30, generator=g, dtype=torch.float64)
    z64[0, 1, 4] += 6.0  # p ~ 0.9 on a negative token
    neg = torch.randint(0, 30, (2, 5), generator=g)
    neg[0, 1] = 4
    mask = torch.rand(2, 5, generator=g) > 0.2
    ref_z = z64.clone().requires_grad_()
    p_neg = torch.softmax(ref_z, -1).gather(-1, neg.unsqueeze(-1)).squeeze(-1)
    ref = -(torch.log((1 - p_neg).clamp_min(1e-6)) * mask).sum()
    ref.backward()
    z = z64.float().to(device).requires_grad_()
    value = hard_unlikelihood(z, neg.to(device), mask.to(device))
    value.backward()
    _close(value, ref, rtol=1e-5)
    _close(z.grad, ref_z.grad)

    a64, b64 = torch.randn(3, 4, 6, generator=g, dtype=torch.float64), torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
    fmask = torch.rand(3, 4, 1, generator=g) > 0.3
    ref_a = a64.clone().requires_grad_()
    full = fmask.expand_as(a64)
    ref_m = torch.exp(-(ref_a - b64) ** 2)[full].mean()
    ref_m.backward()
    a = a64.float().to(device).requires_grad_()
    m = mrse(a, b64.float().to(device), fmask.to(device))
    m.backward()
    assert m.device.type == device.type
    _close(m, ref_m, rtol=1e-5)
    _close(a.grad, ref_a.grad)


# ------------------------------------------------------------------------------ KID policy updates
def _adam_reference(lp, mask, beta, steps, lr, sigma):
    """Algorithm 1 per row in float64: autograd of J = log sum pi* R - beta KL(pi || pi*) and
    torch.optim.Adam (maximise), then the adaptive beta."""
    lp = lp.double().log_softmax(-1)
    out, new_beta, kls = lp.clone(), beta.double().clone(), torch.zeros(lp.size(0), dtype=torch.float64)
    for row in range(lp.size(0)):
        r = mask[row].double()
        if r.sum() == 0:
            continue
        pi = lp[row].exp()
        theta = lp[row].clone().requires_grad_()
        opt = torch.optim.Adam([theta], lr=lr, betas=(0.9, 0.999), eps=1e-8, maximize=True)
        for _ in range(steps):
            opt.zero_grad()
            new = theta.log_softmax(-1)
            objective = torch.log((new.exp() * r).sum()) - beta[row] * (pi * (lp[row] - new)).sum()
            objective.backward()
            opt.step()
        out[row] = theta.detach().log_softmax(-1)
        kls[row] = (pi * (lp[row] - out[row])).sum()
        b = float(beta[row])
        new_beta[row] = 2 * b if kls[row] >= 2 * sigma else (b / 2 if kls[row] <= sigma / 2 else b)
    return out, new_beta, kls


def test_kid_adam_policy_update_matches_autograd_adam_reference(device) -> None:
    from informative_dialogue.kid.policy_update import kid_policy_update

    g = torch.Generator().manual_seed(4)
    lp = (torch.randn(4, 12, generator=g) * 1.5).log_softmax(-1)
    mask = torch.zeros(4, 12, dtype=torch.bool)
    mask[0, [1, 4]] = True
    mask[1, [0, 2, 3, 5, 7]] = True
    mask[3, 11] = True  # row 2: no demonstrations
    beta = torch.tensor([1.0, 0.5, 1.0, 2.0])
    res = kid_policy_update(lp.to(device), mask.to(device), beta.to(device), steps=3, lr=0.3, sigma=0.02)
    for t in (res.log_probs, res.beta, res.kl, res.updated):
        assert t.device.type == device.type
    ref_lp, ref_beta, ref_kl = _adam_reference(lp, mask, beta, 3, 0.3, 0.02)
    _close(res.log_probs, ref_lp)
    _close(res.kl, ref_kl, atol=1e-6)
    assert res.beta.cpu().tolist() == ref_beta.float().tolist()
    assert res.updated.cpu().tolist() == [True, True, False, True]
    assert torch.equal(res.log_probs[2].cpu(), lp[2])  # no demonstrations: bit-identical


def _sigma_reference(lp, demo_sets, sigma):
    """The closed form in float64: per row, tilt D by delta with KL(pi || pi*) = sigma, found
    by bisection on KL(delta) = log(p e^{q delta} + q e^{-p delta})."""
    lp = lp.double().log_softmax(-1)
    out = lp.clone()
    for row, demos in enumerate(demo_sets):
        if not demos:
            continue
        inside = torch.zeros(lp.size(1), dtype=torch.bool)
        inside[list(demos)] = True
        p = float(lp[row].exp()[inside].sum())
        q = 1.0 - p

        def kl(delta: float) -> float:
            return math.log(p * math.exp(q * delta) + q * math.exp(-p * delta))

        lo, hi = 0.0, 1.0
        while kl(hi) < sigma:
            hi *= 2
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if kl(mid) < sigma else (lo, mid)
        delta = (lo + hi) / 2
        out[row] = lp[row] + delta * inside.double() - math.log(p * math.exp(delta) + q)
    return out


def test_sigma_solver_matches_closed_form_reference(device) -> None:
    from informative_dialogue.kid.sigma_solver import sigma_solve

    g = torch.Generator().manual_seed(5)
    lp = (torch.randn(4, 15, generator=g) * 2.0).log_softmax(-1)
    # index form with padding slots and a duplicate; row 2 has none
    index = torch.tensor([[3, 7, 7, 0], [1, 0, 0, 0], [0, 0, 0, 0], [2, 4, 6, 14]])
    valid = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    sigma = 0.3
    res = sigma_solve(lp.to(device), sigma, index.to(device), valid.to(device))
    for t in (res.log_probs, res.kl, res.updated, res.demo_mass, res.shift):
        assert t.device.type == device.type
    demo_sets = [{3, 7}, {1}, set(), {2, 4, 6, 14}]
    _close(res.log_probs, _sigma_reference(lp, demo_sets, sigma))
    assert res.updated.cpu().tolist() == [True, True, False, True]
    _close(res.kl[res.updated], torch.full((3,), sigma, dtype=torch.float64), rtol=1e-5)
    assert torch.equal(res.log_probs[2].cpu(), lp[2])


@pytest.fixture(scope="module")
def toy_store():
    from informative_dialogue.kid.trie import WordNormalizer
    from informative_dialogue.kid.trie_files import TrieStore

    return TrieStore(TOY_TRIE, normalizer=WordNormalizer())


@pytest.mark.parametrize("solver", ["adam", "sigma"])
def test_kid_core_step_stays_on_the_device(device, solver, toy_store) -> None:
    """KIDCore on the toy tries (sentence 0: memory ("car",); 1: ("dog",) from the source;
    2: an empty trie), beam 2: every output on the input's device, equal to the update computed
    on the CPU from the demonstrations the trie query gives."""
    from informative_dialogue.kid.memory import KIDCore
    from informative_dialogue.kid.options import KIDOptions
    from informative_dialogue.kid.policy_update import kid_policy_update
    from informative_dialogue.kid.sigma_solver import sigma_solve
    from informative_dialogue.kid.token_mapping import TokenMapper

    core = KIDCore(toy_store, TokenMapper(TOY_VOCAB, special_ids=range(4)),
                   KIDOptions(hops=1, memory=2, solver=solver, sigma=0.2))
    state = core.new_memory([0, 1, 2], [[], ["the", "dogs"], []], beam_size=2, device=device)
    state.reorder(torch.tensor([1, 0, 3, 2, 5, 4], device=device))
    assert state.memory[0] == ("car",) and state.memory[2] == ("dog",) and state.memory[4] == ()
    assert state.beta.device.type == device.type
    vocab = len(TOY_VOCAB)
    g = torch.Generator().manual_seed(6)
    lp = torch.randn(6, vocab, generator=g).log_softmax(-1)
    res = core.update_result(lp.to(device), state, [0, 1, 2])
    for t in (res.log_probs, res.kl, res.updated, res.beta, state.beta):
        assert t.device.type == device.type

    mask = torch.zeros(6, vocab, dtype=torch.bool)
    for row, mem in enumerate(state.memory):
        mask[row, core.demo_ids([0, 1, 2][state.sentence[row]], mem)] = True
    assert bool(mask[0, TOY_VOCAB.index("engine")]) and not bool(mask[4].any())
    if solver == "adam":
        expected = kid_policy_update(lp, mask, torch.ones(6), steps=3, lr=0.1, sigma=0.2).log_probs
    else:
        expected = sigma_solve(lp, 0.2, demo_mask=mask).log_probs
    _close(res.log_probs, expected.double())
    assert res.updated.cpu().tolist() == [True, True, True, True, False, False]


def test_example_seeded_draws_are_the_same_on_every_device(device) -> None:
    """--sampling-seed-scope example: the Gumbel-max draw on the device's probabilities gives the
    CPU's indices, on the device (the uniforms are made on the CPU and moved)."""
    from informative_dialogue.paired_sampling import example_uniforms, gumbel_max_sample

    probs = torch.softmax(torch.randn(5, 40, generator=torch.Generator().manual_seed(3)), dim=-1)
    probs[:, 7] = 0.0
    u = example_uniforms(9, [4, 0, 17, 4, 2], step=3, shape=(2, 40))
    got = gumbel_max_sample(probs.to(device), u)
    assert got.device.type == torch.device(device).type
    assert got.cpu().tolist() == gumbel_max_sample(probs, u).tolist()
    assert 7 not in got.view(-1).tolist()


def test_kv_perturbation_on_a_toy_step_fn(device) -> None:
    """kv_update.kv_perturbation (helper module; skipped until it exists): K = 2 steps on a
    two-layer toy cache, against the algorithm written out in float64 on the CPU."""
    kv = pytest.importorskip("informative_dialogue.kid.kv_update")
    g = torch.Generator().manual_seed(7)
    n, heads, t, dim, vocab, layers = 3, 2, 3, 4, 10, 2
    past64 = [(torch.randn(n, heads, t, dim, generator=g, dtype=torch.float64),
               torch.randn(n, heads, t, dim, generator=g, dtype=torch.float64)) for _ in range(layers)]
    weights64 = [(torch.randn(dim, vocab, generator=g, dtype=torch.float64),
                  torch.randn(dim, vocab, generator=g, dtype=torch.float64)) for _ in range(layers)]

    def make_step(weights):
        def step_fn(past):
            logits = sum(k.sum(dim=(1, 2)) @ wk + v.sum(dim=(1, 2)) @ wv for (k, v), (wk, wv) in zip(past, weights))
            return logits.log_softmax(-1)
        return step_fn

    index = torch.tensor([[1, 2], [0, 0], [7, 0]])
    valid = torch.tensor([[True, True], [False, False], [True, False]])
    steps, step_size, kl_scale, gamma = 2, 0.05, 0.1, 1.0

    # the reference: Delta from 0; per step the loss -log p(D) + kl_scale KL(p_pert || p_plain)
    # of the rows with demonstrations, its gradient in Delta, per (row, layer) the joint norm of
    # (key grad, value grad), running max over steps, Delta -= step_size grad / norm ** gamma
    step64 = make_step(weights64)
    plain64 = step64(past64)
    deltas = [(torch.zeros_like(k), torch.zeros_like(v)) for k, v in past64]
    max_norm = torch.zeros(n, layers, dtype=torch.float64)
    has_demo = valid.any(1)
    for _ in range(steps):
        leaves = [(dk.clone().requires_grad_(), dv.clone().requires_grad_()) for dk, dv in deltas]
        lp = step64([(k + dk, v + dv) for (k, v), (dk, dv) in zip(past64, leaves)])
        demo_lp = lp.gather(1, index).masked_fill(~valid, float("-inf")).logsumexp(1)
        kl = (lp.exp() * (lp - plain64)).sum(1)
        loss = (-demo_lp + kl_scale * kl)[has_demo].sum()
        grads = torch.autograd.grad(loss, [x for pair in leaves for x in pair])
        new = []
        for layer in range(layers):
            gk, gv = grads[2 * layer], grads[2 * layer + 1]
            norm = (gk.pow(2).flatten(1).sum(1) + gv.pow(2).flatten(1).sum(1)).sqrt()
            max_norm[:, layer] = torch.maximum(max_norm[:, layer], norm)
            scale = (step_size / (max_norm[:, layer] + 1e-15) ** gamma).view(n, 1, 1, 1)
            dk, dv = leaves[layer]
            new.append(((dk - scale * gk).detach(), (dv - scale * gv).detach()))
        deltas = new

    past = [(k.float().to(device), v.float().to(device)) for k, v in past64]
    step_fn = make_step([(wk.float().to(device), wv.float().to(device)) for wk, wv in weights64])
    with torch.no_grad():
        plain = step_fn(past)
    out = kv.kv_perturbation(step_fn, past, plain, index.to(device), valid.to(device), steps=steps,
                             step_size=step_size, kl_scale=kl_scale, gamma=gamma)
    assert out.updated.device.type == device.type and out.updated.cpu().tolist() == [True, False, True]
    for (dk, dv), (rk, rv) in zip(out.deltas, deltas):
        assert dk.device.type == device.type and not dk.requires_grad
        _close(dk, rk)
        _close(dv, rv)
        assert float(dk[1].abs().sum() + dv[1].abs().sum()) == 0.0  # no demonstrations: Delta = 0
    plain_mass = plain.exp().gather(1, index.to(device)).masked_fill(~valid.to(device), 0).sum(1)
    assert bool((out.demo_mass[[0, 2]] > plain_mass[[0, 2]]).all())


# ------------------------------------------------------------------------------ faiss and encoders
def _unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int):
    """Exact maximum inner-product search in float64 numpy: (scores, ids), best first."""
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


def _faiss_for(device, monkeypatch):
    """faiss as the device case sees it: on ``cpu`` reporting no GPU (the CPU branch is checked
    even on a GPU machine); on ``cuda`` the real GPU build (skipped where faiss sees none)."""
    import faiss

    if device.type == "cpu":
        monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)

        def refuse(*_a, **_k):
            raise AssertionError("the GPU branch was taken although faiss reports no GPU")

        monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", refuse)
    elif faiss.get_num_gpus() == 0:
        pytest.skip("faiss sees no GPU (faiss-cpu installed instead of faiss-gpu?)")
    return faiss


def _write_index_dir(path: Path, vectors: np.ndarray, ids: np.ndarray, index_type: str, nlist=None) -> Path:
    """An INDEX_DIR as data_prep.ki.index.load_index reads it (index.faiss + meta.json)."""
    import faiss

    from data_prep.ki.faiss_index import build_faiss_index

    path.mkdir(parents=True, exist_ok=True)
    faiss.write_index(build_faiss_index(vectors, ids, index_type, nlist=nlist, gpu="no"), str(path / "index.faiss"))
    (path / "meta.json").write_text(json.dumps({"n_items": len(ids), "index_type": index_type}))
    return path


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_ki_index_search_equals_brute_force(device, index_type, tmp_path, monkeypatch) -> None:
    """The KI miner's index (data_prep.ki.index.load_index, gpu='auto'): the CPU index where faiss
    reports no GPU, a GPU index on CUDA; top-k ids equal an exact numpy search (IVF probed
    exhaustively)."""
    from data_prep.ki.index import load_index
    from data_prep.ki.miner import faiss_search_fn

    faiss = _faiss_for(device, monkeypatch)
    vectors, queries = _unit_vectors(200, 16, 0), _unit_vectors(25, 16, 1)
    ids = np.arange(1, 201, dtype=np.int64) * 3
    nlist = 8 if index_type == "ivf" else None
    index, _ = load_index(_write_index_dir(tmp_path / "idx", vectors, ids, index_type, nlist), gpu="auto", nprobe=nlist)
    on_gpu = "Gpu" in type(index).__name__ or "Gpu" in faiss.downcast_index(index).__class__.__name__
    assert on_gpu == (device.type == "cuda")
    scores, got = index.search(queries, 5)
    ref_scores, ref_ids = _brute_force(vectors, ids, queries, 5)
    np.testing.assert_array_equal(got, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(faiss_search_fn(index, batch=7)(queries), ref_ids[:, 0])


def test_ki_index_gpu_branch_when_faiss_reports_gpus(tmp_path, monkeypatch) -> None:
    """Branch test (CPU, faiss monkeypatched to report 2 GPUs; not a GPU run): load_index and
    IVF training move the index with index_cpu_to_all_gpus (and back for IVF training), set
    nprobe through GpuParameterSpace, and --gpu no keeps the CPU."""
    import faiss

    from data_prep.ki.faiss_index import build_faiss_index
    from data_prep.ki.index import load_index

    moved, back, params = [], [], []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: moved.append(index) or index)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda index: back.append(index) or index, raising=False)

    class FakeParameterSpace:
        def set_index_parameter(self, index, name, value):
            params.append((name, value))
            faiss.extract_index_ivf(index).nprobe = value

    monkeypatch.setattr(faiss, "GpuParameterSpace", FakeParameterSpace, raising=False)
    vectors, queries = _unit_vectors(120, 8, 2), _unit_vectors(10, 8, 3)
    ids = np.arange(1, 121, dtype=np.int64)
    index = build_faiss_index(vectors, ids, "ivf", nlist=4, gpu="auto")
    assert len(moved) == 1 and len(back) == 1  # IVF trained on the "GPU", returned to the CPU
    build_faiss_index(vectors, ids, "ivf", nlist=4, gpu="no")
    assert len(moved) == 1  # --gpu no: untouched
    directory = _write_index_dir(tmp_path / "idx", vectors, ids, "ivf", nlist=4)
    loaded, _ = load_index(directory, gpu="auto", nprobe=4)
    assert len(moved) == 2 and params == [("nprobe", 4)]
    load_index(directory, gpu="no", nprobe=4)
    assert len(moved) == 2
    _, got = loaded.search(queries, 3)
    np.testing.assert_array_equal(got, _brute_force(vectors, ids, queries, 3)[1])
    faiss.extract_index_ivf(index).nprobe = 4
    np.testing.assert_array_equal(index.search(queries, 3)[1], got)


class _FixedEncoder:
    """A stand-in for DenseEncoder: a fixed unit vector per text (no model)."""

    device = "cpu"

    def __init__(self, table: dict) -> None:
        self.table = table

    def key(self) -> str:
        return "fixed"

    def encode(self, texts, batch_size: int = 64, desc: str = "") -> np.ndarray:
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def _dense_retriever(passages_n: int = 40, dim: int = 12):
    from data_prep.kid.collection import Passage

    vectors = _unit_vectors(passages_n + 6, dim, 4)
    passages = [Passage(f"p{i}", f"title {i}", f"text {i}") for i in range(passages_n)]
    queries = [f"query {j}" for j in range(6)]
    table = {p.retrieval_text(): vectors[i] for i, p in enumerate(passages)}
    table.update({q: vectors[passages_n + j] for j, q in enumerate(queries)})
    return passages, queries, _FixedEncoder(table), vectors


def test_kid_dense_retriever_search_equals_brute_force(device, monkeypatch) -> None:
    """kid-retrieve --retriever dense: IndexFlatIP on the CPU where faiss reports no GPU, on the
    GPUs on CUDA; search (k beyond the collection included) equals an exact numpy search."""
    from data_prep.kid.dense_retriever import DenseRetriever

    faiss = _faiss_for(device, monkeypatch)
    passages, queries, encoder, vectors = _dense_retriever()
    retriever = DenseRetriever(passages, encoder)
    assert ("Gpu" in type(retriever.index).__name__) == (device.type == "cuda"), type(retriever.index)
    assert faiss.get_num_gpus() == (0 if device.type == "cpu" else faiss.get_num_gpus())
    scores, idx = retriever.search(queries, 5)
    ref_scores, ref_idx = _brute_force(vectors[:40], np.arange(40), vectors[40:], 5)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-5)
    s_all, i_all = retriever.search(queries[:1], 45)
    assert (i_all[0, 40:] == -1).all() and (s_all[0, 40:] == 0).all()


def test_kid_dense_retriever_gpu_branch_when_faiss_reports_gpus(monkeypatch) -> None:
    """Branch test (CPU, faiss monkeypatched to report a GPU; not a GPU run)."""
    import faiss

    from data_prep.kid.dense_retriever import DenseRetriever

    moved = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda index: moved.append(index) or index)
    passages, queries, encoder, vectors = _dense_retriever()
    retriever = DenseRetriever(passages, encoder)
    assert len(moved) == 1 and retriever.index is moved[0]
    np.testing.assert_array_equal(retriever.search(queries, 3)[1],
                                  _brute_force(vectors[:40], np.arange(40), vectors[40:], 3)[1])


def test_dense_encoder_on_the_device_matches_float64_cpu(device, tiny_bert) -> None:
    """DenseEncoder.encode (mean pooling over the mask, L2 norm) on ``device`` against the same
    weights in float64 on the CPU, texts of different lengths (padding)."""
    from data_prep.kid.dense_retriever import DenseEncoder

    texts = ["a dog barks", "the car needs fuel and a new engine today", "weather"]
    encoder = DenseEncoder(tiny_bert, max_length=32, device=str(device))
    got = encoder.encode(texts, batch_size=2)
    ref_model = encoder.model.to("cpu").double()
    enc = encoder.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ref_model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).double()
    ref = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_ki_retriever_word_vectors_on_the_device_match_cpu(device, tiny_bert) -> None:
    """The KI miner's encoder (TokenKnowledgeRetriever.encode_words / encode_knowledge) on
    ``device`` against the same weights on the CPU in float64."""
    from data_prep.ki.retriever import TokenKnowledgeRetriever

    torch.manual_seed(0)
    model = TokenKnowledgeRetriever.from_pretrained_bert(tiny_bert, projection_dim=8)
    sentences = [["the", "dog", "barks"], ["a", "car", "needs", "fuel", "today"], ["weather"]]
    ref_model = TokenKnowledgeRetriever.from_pretrained_bert(tiny_bert, projection_dim=8)
    ref_model.load_state_dict(model.state_dict())
    ref_model = ref_model.double()
    model = model.to(device)
    vectors, encoded = model.encode_words(sentences, batch_size=2)
    ref_vectors, ref_encoded = ref_model.encode_words(sentences, batch_size=2)
    np.testing.assert_array_equal(encoded, ref_encoded)
    np.testing.assert_allclose(vectors, ref_vectors, rtol=1e-4, atol=1e-5)
    states, projected = model.encode_knowledge(["a loyal pet", "gasoline is a fuel"], progress=False)
    ref_states, ref_projected = ref_model.encode_knowledge(["a loyal pet", "gasoline is a fuel"], progress=False)
    np.testing.assert_allclose(projected, ref_projected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(states, ref_states, rtol=1e-4, atol=1e-5)
