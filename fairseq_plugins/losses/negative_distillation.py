"""Negative distillation (ND) losses, as pure tensor functions (paper: shared/papers/negative_distillation.txt).

Notation: the negative teacher N (trained with MLE on the high-source-entropy pairs D_N) and the
student S see the same source Q and the same gold prefix r_<i (teacher forcing). Shapes use
B = batch, T = target length, S = key length, V = vocabulary, C = model dimension, H = heads.

Sign conventions (all terms are *minimised*, so every ND term pushes the student AWAY from the
teacher):

- ``soft_unlikelihood`` (Eq. 6–7): ``-sum_i sum_k p_N(k) log(1 - p_S(k))`` >= 0. It is 0 when
  the student gives no probability to what the teacher predicts, and grows without bound as
  p_S(k) -> 1 on a token the teacher likes. Minimising it lowers p_S where p_N is high.
- ``mrse`` (Eq. 8, "mean reverse square error"): ``mean(exp(-(A - B)^2))`` in (0, 1]. It is 1
  for identical features and -> 0 as they move apart; minimising it therefore *increases*
  the distance ``|A - B|`` (d/dA = -2 (A - B) exp(-(A - B)^2): gradient descent moves A away
  from B). It is bounded, so a student already far from the teacher gets a vanishing push,
  which is what keeps the student from running off while the MLE term holds it to the data.
- ``progressive_alpha`` (Eq. 14–16): ``alpha(s) = lambda * sigma'(beta (s - gamma))``, a bump
  peaking at ``lambda / 4`` when ``s = gamma``.
- ``combine`` (Eq. 13): ``(1 - alpha) L_mle + alpha (L_pred + sum_l L_hid^l + sum_l L_att^l)``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_LOG_HALF = -math.log(2.0)


def log1mexp(log_p: Tensor, eps: float = 1e-6) -> Tensor:
    """``log(1 - exp(log_p))`` computed stably, elementwise, any shape.

    Uses ``log(-expm1(x))`` for x > -log 2 and ``log1p(-exp(x))`` below (Mächler, 2012), after
    clamping ``log_p`` to at most ``log(1 - eps)`` so that a probability of 1 gives
    ``log(eps)`` instead of ``-inf`` (the result is then >= log(eps); its gradient there is 0).
    """
    log_p = log_p.clamp(max=math.log1p(-eps))
    out = torch.log1p(-torch.exp(log_p))
    # the expm1 branch only where p > 1/2: at most one entry per distribution, so the whole-
    # tensor cost is one exp and one log1p (torch.where would evaluate both branches everywhere)
    big = (log_p > _LOG_HALF).nonzero(as_tuple=True)
    if big[0].numel():
        out = out.index_put(big, torch.log(-torch.expm1(log_p[big])))
    return out


# rows x vocabulary elements per chunk. On CPU 1 MB blocks in float32, so that the dozen
# elementwise passes of a chunk run in the L2 cache (measured on 2 CPU cores, 3,000 x 14,696
# logits: forward + backward 1.6 s at 2^18 against 2.4 s at 2^22; benchmarks/README.md); on a
# GPU larger blocks, so that each kernel launch has enough work.
SOFT_UL_CHUNK_ELEMENTS = 1 << 18
SOFT_UL_CHUNK_ELEMENTS_GPU = 1 << 22


def _above_half(log_p: Tensor):
    """Indices ``(rows, cols)`` of the entries with p > 1/2 of ``(R, V)`` log-distributions: at
    most one per row, its maximum (one reduction instead of a comparison and a nonzero over
    every entry)."""
    values, cols = log_p.max(dim=-1)
    rows = (values > _LOG_HALF).nonzero(as_tuple=True)[0]
    return rows, cols.index_select(0, rows)


def _log1mexp_(log_p: Tensor, eps: float) -> Tensor:
    """:func:`log1mexp` of ``(R, V)`` log-distributions the caller owns, computed in their
    storage (returned)."""
    limit = math.log1p(-eps)
    big = _above_half(log_p)
    log_p_big = log_p[big] if big[0].numel() else None
    out = log_p.clamp_(max=limit).exp_().neg_().log1p_()
    if log_p_big is not None:
        out[big] = torch.log(-torch.expm1(log_p_big.clamp(max=limit)))
    return out


def _odds_(log_p: Tensor, eps: float) -> Tensor:
    """``p / (1 - p)`` elementwise from ``log_p`` (a tensor the caller owns; overwritten and
    returned), 0 where ``p > 1 - eps`` (there the clamp of :func:`log1mexp` holds ``log(1 - p)``
    constant, so its derivative is 0). ``log_p``: ``(R, V)`` log-distributions. Where p > 1/2
    (at most one entry per distribution) ``1 - p`` is taken as ``-expm1(log p)``, exact near p = 1."""
    big = _above_half(log_p)
    log_p_big = log_p[big] if big[0].numel() else None
    p = log_p.exp_()
    odds = p.div_(1 - p)
    if log_p_big is not None:
        limit = math.log1p(-eps)
        odds_big = log_p_big.exp() / -torch.expm1(log_p_big.clamp(max=limit))
        odds[big] = torch.where(log_p_big > limit, torch.zeros_like(odds_big), odds_big)
    return odds


def _soft_ul_inputs(s: Tensor, z_t: Tensor, temperature: float, log_probs: bool):
    """``(log_p_s, p_n)`` of one chunk, both ``(R, V)``, float32 or float64 (the inputs'
    precision, at least float32). ``s``: student logits, or log-probabilities if ``log_probs``;
    ``z_t``: teacher logits; both fresh copies of the chunk (``index_select``), which the
    function and its caller may overwrite: ``log_p_s`` is ``s`` itself in the log-probs case."""
    dtype = torch.promote_types(s.dtype, torch.float32)

    def softened(z: Tensor) -> Tensor:
        z = z.to(dtype)
        return z / temperature if temperature != 1.0 else z

    log_p_s = s.to(dtype) if log_probs else F.log_softmax(softened(s), dim=-1)
    return log_p_s, F.softmax(softened(z_t), dim=-1)


def _row_dot_(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum(-1)`` for ``(R, V)`` tensors; overwrites ``a`` with the product (a batched
    matrix product of ``(1, V) x (V, 1)`` blocks is several times slower on CPU)."""
    return a.mul_(b).sum(dim=-1)


class _SoftUnlikelihood(torch.autograd.Function):
    """Row-chunked soft unlikelihood with an analytic backward (no ``(N, V)`` autograd graph),
    computed on the listed rows only (padding positions cost nothing).

    For one position, with ``p = softmax(z / t)`` (student), ``q`` the teacher's softened
    distribution and ``L = -sum_k q_k log(1 - p_k)``::

        dL/d log p_k = w_k,    w_k = q_k p_k / (1 - p_k)
        dL/dz_j = (w_j - p_j sum_k w_k) / t

    and ``w_k = 0`` where ``p_k > 1 - eps`` (there the clamp of :func:`log1mexp` holds the
    value constant). Given log-probabilities (``log_probs=True``) the function returns the
    first gradient and leaves the log-softmax's own backward to autograd: a criterion that
    already has the student's ``log_softmax`` for its NLL then pays for one log-softmax
    backward, shared by both terms, instead of recomputing the softmax here. Forward and
    backward both work on ``chunk`` rows at a time, so the transient memory is a few
    ``(chunk, V)`` blocks instead of the eight or so ``(N, V)`` tensors that autograd keeps for
    the composed expression; the backward recomputes the softmaxes from the saved inputs."""

    @staticmethod
    def forward(ctx, s: Tensor, z_t: Tensor, rows: Tensor, temperature: float, eps: float, chunk: int,
                log_probs: bool) -> Tensor:
        ctx.save_for_backward(s, z_t, rows)
        ctx.temperature, ctx.eps, ctx.chunk, ctx.log_probs = temperature, eps, chunk, log_probs
        dtype = torch.promote_types(s.dtype, torch.float32)
        out = s.new_zeros(s.size(0), dtype=dtype)
        for start in range(0, rows.numel(), chunk):
            idx = rows[start : start + chunk]
            log_p_s, p_n = _soft_ul_inputs(s.index_select(0, idx), z_t.index_select(0, idx), temperature, log_probs)
            out.index_copy_(0, idx, _row_dot_(p_n, _log1mexp_(log_p_s, eps)).neg_())
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        s, z_t, rows = ctx.saved_tensors
        t, eps, chunk = ctx.temperature, ctx.eps, ctx.chunk
        grad = torch.empty_like(s)
        if rows.numel() < s.size(0):  # only the rows not computed below need zeros
            skipped = torch.ones(s.size(0), dtype=torch.bool, device=s.device)
            skipped[rows] = False
            grad[skipped] = 0
        for start in range(0, rows.numel(), chunk):
            idx = rows[start : start + chunk]
            g = grad_out.index_select(0, idx)
            if not bool(g.ne(0).any()):  # an upstream zero gradient: nothing to compute
                grad.index_fill_(0, idx, 0)
                continue
            log_p_s, p_n = _soft_ul_inputs(s.index_select(0, idx), z_t.index_select(0, idx), t, ctx.log_probs)
            if ctx.log_probs:
                d = p_n.mul_(_odds_(log_p_s, eps)).mul_(g.unsqueeze(-1))
            else:
                p_s = log_p_s.exp()
                w = p_n.mul_(_odds_(log_p_s, eps))
                d = w.sub_(p_s.mul_(w.sum(dim=-1, keepdim=True))).mul_((g / t).unsqueeze(-1))
            grad.index_copy_(0, idx, d.to(grad.dtype))
        return grad, None, None, None, None, None, None


def soft_unlikelihood(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Optional[Tensor] = None,
    temperature: float = 1.0,
    eps: float = 1e-6,
    reduce: bool = True,
    chunk_elements: Optional[int] = None,
    student_log_probs: bool = False,
) -> Tensor:
    """Soft unlikelihood L_pred (Eq. 6–7).

    Args:
        student_logits: ``(B, T, V)`` pre-softmax scores z of the student; with
            ``student_log_probs=True`` instead its log-probabilities ``log_softmax(z)`` (the
            tensor a criterion already has for its NLL; temperature must then be 1).
        teacher_logits: ``(B, T, V)`` those of the teacher (no gradient is taken through them).
        mask: ``(B, T)`` bool, True at real target positions (padding excluded); None = all.
            Masked-out positions are not computed at all (their value is 0).
        temperature: t of Eq. 7, applied to both softmaxes: ``p = softmax(z / t)``.
        eps: ``1 - p_S`` is floored at ``eps`` (see :func:`log1mexp`).
        reduce: sum over positions (scalar) if True, else per-position values ``(B, T)``.
        chunk_elements: positions are processed ``max(1, chunk_elements // V)`` at a time, in the
            forward and in the analytic backward (:class:`_SoftUnlikelihood`); None = 2^18 on
            CPU, 2^22 on other devices. The value and the gradient do not depend on it.
        student_log_probs: see ``student_logits``; value and gradient (through the caller's
            log-softmax) are those of the logits form.

    Returns:
        ``-sum_{i} sum_k p_N(k) log(1 - p_S(k))`` (>= 0), summed over the masked positions.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} != teacher {tuple(teacher_logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_log_probs and temperature != 1.0:
        raise ValueError(f"student log-probabilities are at temperature 1; got temperature {temperature} "
                         "(pass the logits instead)")
    vocab = student_logits.size(-1)
    if chunk_elements is None:
        on_cpu = student_logits.device.type == "cpu"
        chunk_elements = SOFT_UL_CHUNK_ELEMENTS if on_cpu else SOFT_UL_CHUNK_ELEMENTS_GPU
    chunk = max(1, chunk_elements // max(vocab, 1))
    flat = student_logits.reshape(-1, vocab)
    if mask is None:
        rows = torch.arange(flat.size(0), device=flat.device)
    else:
        if mask.shape != student_logits.shape[:-1]:
            raise ValueError(f"mask {tuple(mask.shape)} != positions {tuple(student_logits.shape[:-1])}")
        rows = mask.reshape(-1).nonzero(as_tuple=True)[0]
    per_row = _SoftUnlikelihood.apply(
        flat, teacher_logits.detach().reshape(-1, vocab), rows, float(temperature), float(eps), chunk,
        bool(student_log_probs),
    )
    per_position = per_row.view(student_logits.shape[:-1])
    return per_position.sum() if reduce else per_position


def hard_unlikelihood(
    student_logits: Tensor,
    negative_tokens: Tensor,
    mask: Optional[Tensor] = None,
    temperature: float = 1.0,
    eps: float = 1e-6,
    reduce: bool = True,
) -> Tensor:
    """L_pred with a one-hot negative target (Eq. 2 with one candidate per position): the
    "hard target" and "random target" variants of the paper's Table 9.

    Args:
        student_logits: ``(B, T, V)``.
        negative_tokens: ``(B, T)`` long, the negative token at each position.
        mask: ``(B, T)`` bool, positions that have a negative token; None = all.

    Returns:
        ``-sum_i log(1 - p_S(negative_i))`` over the masked positions (or ``(B, T)``).
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    picked = log_p_s.gather(-1, negative_tokens.unsqueeze(-1)).squeeze(-1)
    per_position = -log1mexp(picked, eps)
    if mask is not None:
        per_position = per_position * mask.to(per_position.dtype)
    return per_position.sum() if reduce else per_position


def mrse(a: Tensor, b: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Mean reverse square error (Eq. 8): ``(1/n) sum_i exp(-(a_i - b_i)^2)``.

    Args:
        a, b: feature tensors of the same shape (e.g. hidden states ``(T, B, C)`` or attention
            scores ``(B, H, T, S)``).
        mask: bool tensor broadcastable to ``a``; only True elements enter the mean (n = number
            of True elements after broadcasting). None = all elements.

    Returns:
        A scalar in (0, 1]; 1 when ``a == b`` on every counted element. Minimising it pushes
        ``a`` and ``b`` apart (see the module docstring). Masked-out elements may hold anything,
        even ``inf`` (they are replaced before the exponential, so they give no NaN gradient).
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = a.float() - b.float()
    if mask is None:
        return torch.exp(-diff.pow(2)).mean()
    mask = mask.expand_as(diff) if mask.shape != diff.shape else mask
    diff = diff.masked_fill(~mask, 0.0)
    values = torch.exp(-diff.pow(2)) * mask.to(diff.dtype)
    n = mask.sum()
    if n == 0:
        return values.sum() * 0.0
    return values.sum() / n


def progressive_alpha(step: float, lam: float = 4.0, gamma: float = 25600.0, beta: Optional[float] = None) -> float:
    """Progressive ND weight (Eq. 14–16): ``lam * sigma'(beta * (step - gamma))`` with
    ``sigma'(z) = sigma(z) (1 - sigma(z)) = e^-z / (e^-z + 1)^2``.

    Defaults are the paper's (§3.2): lambda = 4 (peak lambda/4 = 1 at step = gamma),
    gamma = 25600, beta = 6 / gamma (so alpha(0) = 4 sigma'(-6) ~ 0.0099).
    """
    if beta is None:
        beta = 6.0 / gamma
    z = beta * (step - gamma)
    # sigma(z) * sigma(-z), each computed without overflow
    if z >= 0:
        e = math.exp(-z)
        return lam * e / (1.0 + e) ** 2
    e = math.exp(z)
    return lam * e / (1.0 + e) ** 2


def mean_progressive_alpha(total_steps: float, lam: float = 4.0, gamma: float = 25600.0,
                           beta: Optional[float] = None) -> float:
    """Average of :func:`progressive_alpha` over steps ``[0, total_steps]`` (closed form,
    ``lam / beta * (sigma(beta (S - gamma)) - sigma(-beta gamma)) / S``): the paper's "fixed α"
    of Table 8 is this average over the steps to convergence."""
    if beta is None:
        beta = 6.0 / gamma
    if total_steps <= 0:
        return progressive_alpha(0.0, lam, gamma, beta)

    def sigmoid(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))

    return lam / beta * (sigmoid(beta * (total_steps - gamma)) - sigmoid(-beta * gamma)) / total_steps


def combine(mle: Tensor, alpha: float, pred: Optional[Tensor] = None,
            hid: Sequence[Tensor] = (), att: Sequence[Tensor] = ()) -> Tensor:
    """Eq. 13: ``(1 - alpha) * mle + alpha * (pred + sum(hid) + sum(att))``; absent terms are 0.

    With ``alpha == 0`` this returns ``mle`` itself (same value and gradients), whatever the
    other terms hold.
    """
    if alpha == 0.0:
        return mle
    negative = mle.new_zeros(())
    if pred is not None:
        negative = negative + pred
    for term in list(hid) + list(att):
        negative = negative + term
    return (1.0 - alpha) * mle + alpha * negative
