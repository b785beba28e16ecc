"""Negative distillation loss functions on tiny hand-computed tensors."""
from __future__ import annotations

import math

import pytest
import torch

from informative_dialogue.nd import losses as nd
from informative_dialogue.nd import soft_unlikelihood as su


def test_soft_unlikelihood_hand_computed() -> None:
    # one position, vocabulary of 2: student p_S = softmax([0, ln 3]) = (1/4, 3/4),
    # teacher p_N = softmax([ln 2, 0]) = (2/3, 1/3)
    student = torch.tensor([[[0.0, math.log(3.0)]]])
    teacher = torch.tensor([[[math.log(2.0), 0.0]]])
    expected = -(2 / 3 * math.log(1 - 1 / 4) + 1 / 3 * math.log(1 - 3 / 4))
    assert su.soft_unlikelihood(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_soft_unlikelihood_temperature_mask_and_sum() -> None:
    student = torch.tensor([[[0.0, 2 * math.log(3.0)], [5.0, -5.0]]])  # second position masked
    teacher = torch.tensor([[[2 * math.log(2.0), 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, False]])
    # t = 2 halves the logits: back to the distributions of the test above
    expected = -(2 / 3 * math.log(3 / 4) + 1 / 3 * math.log(1 / 4))
    got = su.soft_unlikelihood(student, teacher, mask, temperature=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    per_pos = su.soft_unlikelihood(student, teacher, mask, temperature=2.0, reduce=False)
    assert per_pos.shape == (1, 2) and per_pos[0, 1].item() == 0.0


def test_soft_unlikelihood_is_stable_at_certainty() -> None:
    student = torch.tensor([[[100.0, -100.0, -100.0]]], requires_grad=True)
    teacher = torch.tensor([[[100.0, -100.0, -100.0]]])
    loss = su.soft_unlikelihood(student, teacher, eps=1e-6)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(-math.log(1e-6), rel=1e-4)
    loss.backward()
    assert torch.isfinite(student.grad).all()


def _autograd_soft_unlikelihood(student, teacher, mask, temperature, eps, weights=1.0):
    """The composed expression of Eq. 6-7, differentiated by autograd (the reference);
    ``weights``: per-position factors of the sum."""
    log_p_s = torch.log_softmax(student / temperature, dim=-1)
    p_n = torch.softmax(teacher / temperature, dim=-1)
    return (-(p_n * su.log1mexp(log_p_s, eps)).sum(-1) * mask * weights).sum()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_soft_unlikelihood_analytic_gradient_matches_autograd(temperature: float) -> None:
    torch.manual_seed(0)
    student = torch.randn(3, 4, 9, dtype=torch.float64)
    student[0, 0, 2] = 40.0  # p_S ~ 1: inside the eps clamp, where the term is constant
    student[2, 3, 4] = 4.0  # 1/2 < p_S < 1 - eps: the expm1 branch of log1mexp and of the odds
    student.requires_grad_()
    teacher = torch.randn(3, 4, 9, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True], [True, False, False, False], [True, True, True, True]])
    got = su.soft_unlikelihood(student, teacher, mask, temperature, chunk_elements=20)  # chunks of 2 rows
    (grad_got,) = torch.autograd.grad(got, student)
    ref = _autograd_soft_unlikelihood(student, teacher, mask, temperature, 1e-6)
    (grad_ref,) = torch.autograd.grad(ref, student)
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(grad_got, grad_ref, rtol=1e-9, atol=1e-12)
    assert grad_got[1, 1:].abs().max() == 0  # masked positions get no gradient
    assert torch.autograd.gradcheck(lambda x: su.soft_unlikelihood(x, teacher, mask, temperature, chunk_elements=27), (student,))


def test_soft_unlikelihood_from_log_probs_matches_the_logits_form() -> None:
    """The criterion's shared-log-softmax path: same value, and through the caller's log-softmax
    the same gradient, including the clamp and the expm1 branch."""
    torch.manual_seed(3)
    student = torch.randn(3, 4, 9, dtype=torch.float64)
    student[0, 0, 2] = 40.0
    student[2, 3, 4] = 4.0
    student.requires_grad_()
    teacher = torch.randn(3, 4, 9, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True], [True, False, False, False], [True, True, True, True]])
    ref = su.soft_unlikelihood(student, teacher, mask, 1.0, chunk_elements=20)
    (grad_ref,) = torch.autograd.grad(ref, student)
    got = su.soft_unlikelihood(torch.log_softmax(student, -1), teacher, mask, 1.0, chunk_elements=20,
                               student_log_probs=True)
    (grad_got,) = torch.autograd.grad(got, student)
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(grad_got, grad_ref, rtol=1e-9, atol=1e-12)
    log_p = torch.log_softmax(student.detach(), -1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: su.soft_unlikelihood(x, teacher, mask, 1.0, chunk_elements=27, student_log_probs=True), (log_p,))
    with pytest.raises(ValueError, match="temperature 1"):
        su.soft_unlikelihood(log_p, teacher, mask, 2.0, student_log_probs=True)


@pytest.mark.parametrize("chunk_elements", [None, 6, 12])  # one block; one row per block; two rows
def test_soft_unlikelihood_padding_never_leaks(chunk_elements) -> None:
    """Padding positions may hold anything (here inf and nan): blocks of padding only are
    skipped, padded rows of a mixed block are overwritten (not multiplied by 0), so neither the
    value nor the gradient sees them."""
    torch.manual_seed(4)
    student = torch.randn(2, 3, 6)
    teacher = torch.randn(2, 3, 6)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    clean = su.soft_unlikelihood(student, teacher, mask, reduce=False, chunk_elements=chunk_elements)
    student[0, 2] = float("inf")
    student[1, 1:] = float("nan")
    teacher[1, 2] = float("nan")
    student.requires_grad_()
    per_position = su.soft_unlikelihood(student, teacher, mask, reduce=False, chunk_elements=chunk_elements)
    assert torch.equal(per_position.detach(), clean)
    assert per_position[~mask].abs().max() == 0
    per_position.sum().backward()
    assert torch.isfinite(student.grad).all() and student.grad[~mask].abs().max() == 0
    student.grad = None
    su.soft_unlikelihood(student, teacher, mask, chunk_elements=chunk_elements).backward()
    assert torch.isfinite(student.grad).all() and student.grad[~mask].abs().max() == 0
    with pytest.raises(ValueError, match="mask"):
        su.soft_unlikelihood(student, teacher, mask[:, :2])


def test_soft_unlikelihood_does_not_depend_on_chunking_nor_grad_of_teacher() -> None:
    torch.manual_seed(1)
    student = torch.randn(2, 5, 7, requires_grad=True)
    teacher = torch.randn(2, 5, 7, requires_grad=True)
    results = []
    for chunk_elements in (1, 7, 15, 10_000):
        loss = su.soft_unlikelihood(student, teacher, None, 1.0, chunk_elements=chunk_elements)
        results.append((loss.item(), torch.autograd.grad(loss, student)[0]))
    for value, grad in results[1:]:
        assert value == pytest.approx(results[0][0], rel=1e-6) and torch.allclose(grad, results[0][1], atol=1e-7)
    su.soft_unlikelihood(student, teacher).backward()
    assert teacher.grad is None  # the teacher is a constant of L_pred


def test_soft_unlikelihood_gradient_under_repeated_and_weighted_backward() -> None:
    """The gradient is computed in the forward pass and scaled by the backward pass: a second
    backward through the same graph with another output gradient (retain_graph), a zero
    output gradient, and per-position output gradients (reduce=False) all give autograd's."""
    torch.manual_seed(5)
    student = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 8, dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    (unit,) = torch.autograd.grad(_autograd_soft_unlikelihood(student, teacher, mask, 1.5, 1e-6), student)
    loss = su.soft_unlikelihood(student, teacher, mask, 1.5, chunk_elements=16)
    for weight in (2.0, 0.0, -3.0, 1.0):
        (grad,) = torch.autograd.grad(loss * weight, student, retain_graph=True)
        assert torch.allclose(grad, weight * unit, rtol=1e-12, atol=1e-15)
    weights = torch.randn(2, 3, dtype=torch.float64)
    per_position = su.soft_unlikelihood(student, teacher, mask, 1.5, reduce=False, chunk_elements=16)
    (grad,) = torch.autograd.grad((per_position * weights).sum(), student)
    (grad_ref,) = torch.autograd.grad(_autograd_soft_unlikelihood(student, teacher, mask, 1.5, 1e-6, weights), student)
    assert torch.allclose(grad, grad_ref, rtol=1e-12, atol=1e-15)


def test_soft_unlikelihood_without_grad_and_in_half_precision() -> None:
    """No gradient is stored when none is needed; float16 inputs are computed in float32 and
    get a float16 gradient."""
    torch.manual_seed(6)
    student = torch.randn(2, 4, 10)
    teacher = torch.randn(2, 4, 10)
    with torch.no_grad():
        value = su.soft_unlikelihood(student, teacher)
    half = student.half().requires_grad_()
    value_half = su.soft_unlikelihood(half, teacher.half())
    assert value_half.dtype == torch.float32 and value_half.item() == pytest.approx(value.item(), rel=1e-2)
    value_half.backward()
    assert half.grad.dtype == torch.float16 and torch.isfinite(half.grad).all()


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mle_and_soft_unlikelihood_equal_the_two_terms_computed_apart(alpha: float, smoothing: float) -> None:
    """The fused MLE + L_pred kernel against fairseq's label_smoothed_nll_loss plus L_pred, in
    float64: value, parts and gradient, with padding, a floored p ~ 1 and a p > 1/2, for
    blocks of one row, two rows and all rows."""
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    torch.manual_seed(7)
    bsz, tgt_len, vocab, pad = 3, 5, 11, 1
    student = torch.randn(bsz, tgt_len, vocab, dtype=torch.float64)
    student[0, 0, 2] = 40.0
    student[2, 3, 4] = 4.0
    student.requires_grad_()
    teacher = torch.randn(bsz, tgt_len, vocab, dtype=torch.float64)
    target = torch.randint(2, vocab, (bsz, tgt_len))
    target[0, 3:] = pad
    target[1, 4] = pad
    target[2, 3] = 4  # the gold token is the p > 1/2 entry
    log_p = torch.log_softmax(student, -1)
    mle, nll = label_smoothed_nll_loss(log_p.view(-1, vocab), target.view(-1), smoothing, ignore_index=pad)
    pred = su.soft_unlikelihood(log_p, teacher, target.ne(pad), student_log_probs=True)
    (grad_ref,) = torch.autograd.grad((1 - alpha) * mle + alpha * pred, student)
    for chunk_elements in (11, 22, None):
        weighted, got_mle, got_nll, got_pred = su.mle_and_soft_unlikelihood(
            torch.log_softmax(student, -1), target, teacher, alpha, smoothing, pad, chunk_elements=chunk_elements)
        (grad,) = torch.autograd.grad(weighted, student)
        assert weighted.item() == pytest.approx(((1 - alpha) * mle + alpha * pred).item(), rel=1e-12)
        assert [got_mle.item(), got_nll.item(), got_pred.item()] == pytest.approx(
            [mle.item(), nll.item(), pred.item()], rel=1e-12)
        assert not got_pred.requires_grad
        assert torch.allclose(grad, grad_ref, rtol=1e-10, atol=1e-14)
        assert grad[0, 3:].abs().max() == 0  # padding


def test_mle_and_soft_unlikelihood_shape_errors() -> None:
    log_p = torch.log_softmax(torch.randn(2, 3, 5), -1)
    with pytest.raises(ValueError, match="teacher"):
        su.mle_and_soft_unlikelihood(log_p, torch.ones(2, 3, dtype=torch.long), torch.randn(2, 3, 4), 0.5, 0.1, 1)
    with pytest.raises(ValueError, match="target"):
        su.mle_and_soft_unlikelihood(log_p, torch.ones(2, 2, dtype=torch.long), torch.randn(2, 3, 5), 0.5, 0.1, 1)


@pytest.mark.parametrize("fused", [False, True])
def test_overwrite_teacher_gives_the_same_value_and_gradient(fused: bool) -> None:
    """With overwrite_teacher the teacher's buffer holds the gradient: same results, no new
    (N, V) tensor; teacher logits that are part of a graph are refused."""
    torch.manual_seed(8)
    student = torch.randn(2, 4, 9, requires_grad=True)
    teacher = torch.randn(2, 4, 9)
    target = torch.randint(2, 9, (2, 4))
    target[1, 3] = 1

    def run(overwrite: bool, teacher_logits: torch.Tensor):
        if fused:
            value = su.mle_and_soft_unlikelihood(torch.log_softmax(student, -1), target, teacher_logits, 0.4, 0.1, 1,
                                                 chunk_elements=18, overwrite_teacher=overwrite)[0]
        else:
            value = su.soft_unlikelihood(student, teacher_logits, target.ne(1), 2.0, chunk_elements=18,
                                         overwrite_teacher=overwrite)
        return value, torch.autograd.grad(value, student)[0]

    value, grad = run(False, teacher)
    consumed = teacher.clone()
    value_o, grad_o = run(True, consumed)
    assert value_o.item() == value.item() and torch.equal(grad_o, grad)
    assert not torch.equal(consumed, teacher)  # the buffer was used
    with pytest.raises(ValueError, match="without gradient"):
        run(True, teacher.clone().requires_grad_())


def test_log1mexp_gradient_in_both_branches_and_the_clamp() -> None:
    # d/dx log(1 - e^x) = -e^x / (1 - e^x); 0 inside the clamp (x > log(1 - eps))
    x = torch.tensor([-50.0, -3.0, -0.7, -0.6, -1e-3, -1e-9], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(su.log1mexp(x, eps=1e-6).sum(), x)
    expected = -torch.exp(x) / -torch.expm1(x)
    expected[-1] = 0.0
    assert torch.allclose(grad, expected.detach(), rtol=1e-12, atol=0)


def test_log1mexp_matches_direct_formula() -> None:
    lp = torch.tensor([-20.0, -3.0, -0.7, -0.1, -1e-3], dtype=torch.float64)
    assert torch.allclose(su.log1mexp(lp, eps=1e-12), torch.log(1 - lp.exp()), rtol=1e-9)


def test_hard_unlikelihood_hand_computed() -> None:
    student = torch.tensor([[[0.0, math.log(3.0)], [math.log(3.0), 0.0]]])  # p = (1/4, 3/4), (3/4, 1/4)
    neg = torch.tensor([[1, 1]])
    mask = torch.tensor([[True, True]])
    expected = -(math.log(1 - 3 / 4) + math.log(1 - 1 / 4))
    assert nd.hard_unlikelihood(student, neg, mask).item() == pytest.approx(expected, rel=1e-6)


def test_mrse_hand_computed_and_identical() -> None:
    a = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    expected = (1 + math.exp(-1) + math.exp(-4) + math.exp(-4)) / 4
    assert nd.mrse(a, b).item() == pytest.approx(expected, rel=1e-6)
    # identical tensors: exp(0) = 1 for every element, so the mean is 1
    x = torch.randn(3, 4, 5)
    assert nd.mrse(x, x.clone()).item() == 1.0
    assert torch.equal(torch.exp(-(x - x) ** 2), torch.ones_like(x))


def test_mrse_mask_counts_only_valid_elements_even_with_inf() -> None:
    a = torch.tensor([[0.0, float("-inf")], [1.0, 2.0]], requires_grad=True)
    b = torch.tensor([[0.0, float("-inf")], [0.0, 5.0]])
    mask = torch.tensor([[True, False], [True, False]])
    got = nd.mrse(a, b, mask)
    assert got.item() == pytest.approx((1 + math.exp(-1)) / 2, rel=1e-6)
    got.backward()
    assert torch.isfinite(a.grad).all() and a.grad[0, 1] == 0 and a.grad[1, 1] == 0


def test_minimising_mrse_moves_features_apart() -> None:
    a = torch.tensor([0.3, -0.2], requires_grad=True)
    b = torch.tensor([0.0, 0.0])
    before = (a - b).abs().detach().clone()
    nd.mrse(a, b).backward()
    with torch.no_grad():
        a -= 0.1 * a.grad
    assert ((a - b).abs() > before).all()


def test_progressive_alpha_shape() -> None:
    gamma = 25600
    assert nd.progressive_alpha(gamma) == pytest.approx(1.0)  # lambda / 4 with lambda = 4
    assert nd.progressive_alpha(100, lam=2.0, gamma=100, beta=0.5) == pytest.approx(0.5)
    peak = nd.progressive_alpha(gamma)
    for s in (0, 1000, gamma - 1, gamma + 1, 2 * gamma, 10 * gamma):
        assert nd.progressive_alpha(s) < peak
    # sigma'(-6) * 4 at s = 0 with beta = 6 / gamma, symmetric around gamma
    z = -6.0
    assert nd.progressive_alpha(0) == pytest.approx(4 * math.exp(-z) / (math.exp(-z) + 1) ** 2)
    assert nd.progressive_alpha(gamma - 500) == pytest.approx(nd.progressive_alpha(gamma + 500))
    assert nd.progressive_alpha(1e12) == 0.0 and nd.progressive_alpha(-1e12) == 0.0  # no overflow


def test_mean_progressive_alpha_matches_numeric_average() -> None:
    steps = 51200
    numeric = sum(nd.progressive_alpha(s + 0.5) for s in range(steps)) / steps
    assert nd.mean_progressive_alpha(steps) == pytest.approx(numeric, rel=1e-4)
    assert nd.mean_progressive_alpha(steps) == pytest.approx(0.33, abs=0.005)  # the --nd-alpha default


def test_combine_alpha_zero_is_mle_and_eq13() -> None:
    mle = torch.tensor(3.0, requires_grad=True)
    pred = torch.tensor(2.0, requires_grad=True)
    assert nd.combine(mle, 0.0, pred, [torch.tensor(1.0)]) is mle
    got = nd.combine(mle, 0.25, pred, [torch.tensor(1.0), torch.tensor(0.5)], [torch.tensor(0.5)])
    assert got.item() == pytest.approx(0.75 * 3.0 + 0.25 * (2.0 + 1.0 + 0.5 + 0.5))
