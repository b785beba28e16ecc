"""Soft unlikelihood, L_pred of negative distillation (Eq. 6–7), as a row-blocked kernel.

``L = -sum_i sum_k q_k log(1 - p_k)`` with ``p = softmax(z / t)`` the student's and ``q`` the
negative teacher's softened distribution at each target position i. Per position, with
``w_k = q_k p_k / (1 - p_k)``::

    dL/d log p_k = w_k,    dL/dz_j = (w_j - p_j sum_k w_k) / t

and ``w_k = 0`` where ``p_k > 1 - eps`` (there ``1 - p`` is floored at ``eps``, so the value is
constant). The forward pass computes the value and this gradient together, ``chunk`` rows at
a time, so that the dozen elementwise passes of a block run in the CPU's L2 cache instead of
streaming ``(N, V)`` tensors through memory, and the backward pass only scales the stored
gradient: the softmaxes are computed once, and nothing of size ``(N, V)`` is kept for the
backward pass except the gradient itself (which the backward pass returns).

- :func:`soft_unlikelihood`: L_pred from the student's logits (any temperature) or its
  log-probabilities (t = 1).
- :func:`mle_and_soft_unlikelihood`: ``(1 - alpha) L_mle + alpha L_pred`` at t = 1, fairseq's
  label-smoothed NLL folded into the same pass over the log-probabilities.
- ``overwrite_teacher``: the gradient goes into the teacher logits' buffer, which the kernel has
  read by then (no new ``(N, V)`` tensor).

The kernel is bound by reading its two ``(N, V)`` inputs and writing the gradient, not by its
arithmetic: a ``torch.compile``d block was no faster on CPU (``benchmarks/README.md``, run D).

Shapes: N = positions (batch x target length), V = vocabulary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

_LOG_HALF = -math.log(2.0)

# rows x vocabulary elements per block. On CPU 512 KB in float32: the block's five (rows, V)
# buffers then fit the L2 cache (measured on 2 CPU cores, 3,000 x 14,696 log-probabilities,
# forward + backward of L_pred: benchmarks/README.md); on a GPU larger blocks, so that each
# kernel launch has enough work.
SOFT_UL_CHUNK_ELEMENTS = 1 << 17
SOFT_UL_CHUNK_ELEMENTS_GPU = 1 << 22


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


def _above_half(log_p: Tensor):
    """Indices ``(rows, cols)`` of the entries with p > 1/2 of ``(R, V)`` log-distributions: at
    most one per row, its maximum (one reduction instead of a comparison and a nonzero over
    every entry)."""
    values, cols = log_p.max(dim=-1)
    rows = (values > _LOG_HALF).nonzero(as_tuple=True)[0]
    return rows, cols.index_select(0, rows)


def _softened(z: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    z = z.to(dtype)
    return z / temperature if temperature != 1.0 else z


def _soft_ul_block(s: Tensor, z_t: Tensor, out: Tensor, grad: Optional[Tensor], temperature: float,
                   eps: float, log_probs: bool, grad_scale: float = 1.0, grad_shift: float = 0.0) -> None:
    """L_pred and its gradient on one block of rows, written into ``out`` and ``grad``.

    Args:
        s: ``(R, V)`` student logits, or log-probabilities if ``log_probs``; read only.
        z_t: ``(R, V)`` teacher logits; read only.
        out: ``(R,)`` receives ``-sum_k q_k log(1 - p_k)`` per row (its dtype is the compute
            dtype: the inputs' precision, at least float32).
        grad: ``(R, V)`` or None; receives the gradient with respect to ``s`` of the row values
            (``w`` for log-probabilities, ``(w - p sum w) / t`` for logits).
        grad_scale, grad_shift: log-probabilities only: ``grad`` receives
            ``grad_scale * w + grad_shift`` instead (another term's gradient folded in while the
            block is in the cache, see :func:`mle_and_soft_unlikelihood`).
    """
    dtype = out.dtype
    log_p = s.to(dtype) if log_probs else F.log_softmax(_softened(s, temperature, dtype), dim=-1)
    q = F.softmax(_softened(z_t, temperature, dtype), dim=-1)
    big = _above_half(log_p)
    p = log_p.exp()
    one_minus_p = torch.neg(p)
    log_one_minus_p = torch.log1p(one_minus_p)
    one_minus_p.add_(1.0)
    if big[0].numel():
        # p > 1/2 (at most one entry per row): 1 - p as -expm1(log p), exact near p = 1, with
        # 1 - p floored at eps
        limit = math.log1p(-eps)
        log_p_big = log_p[big]
        one_minus_big = torch.expm1(log_p_big.clamp(max=limit)).neg_()
        log_one_minus_p[big] = torch.log(one_minus_big)
        one_minus_p[big] = one_minus_big
    torch.sum(log_one_minus_p.mul_(q), dim=-1, out=out).neg_()
    if grad is None:
        return
    if log_probs:
        # grad_shift + grad_scale * q p / (1 - p) in one pass
        w = torch.addcdiv(q.new_tensor(grad_shift), q.mul_(p), one_minus_p, value=grad_scale, out=grad)
    else:
        w = q.mul_(p).div_(one_minus_p)
    if big[0].numel():
        floored = log_p_big > limit
        if bool(floored.any()):  # inside the floor the value is constant: no gradient
            w[big[0][floored], big[1][floored]] = grad_shift if log_probs else 0.0
    if not log_probs:
        torch.sub(w, p.mul_(w.sum(dim=-1, keepdim=True)), out=grad)
        if temperature != 1.0:
            grad.div_(temperature)


def _rows_per_block(scores: Tensor, chunk_elements: Optional[int]) -> int:
    """Rows per block for ``(..., V)`` scores: ``chunk_elements // V`` (at least 1); None = the
    device's default (:data:`SOFT_UL_CHUNK_ELEMENTS` on CPU, ``..._GPU`` elsewhere)."""
    if chunk_elements is None:
        on_cpu = scores.device.type == "cpu"
        chunk_elements = SOFT_UL_CHUNK_ELEMENTS if on_cpu else SOFT_UL_CHUNK_ELEMENTS_GPU
    return max(1, chunk_elements // max(scores.size(-1), 1))


def _may_overwrite(teacher_logits: Tensor, requested: bool) -> bool:
    """Whether the kernel may write into ``teacher_logits``: asked for, and not part of a graph."""
    if requested and teacher_logits.requires_grad:
        raise ValueError("overwrite_teacher=True needs teacher logits without gradient (computed under no_grad)")
    return requested


def _block_row_counts(valid: Optional[Tensor], n: int, chunk: int) -> Optional[List[int]]:
    """Number of valid rows in each block of ``chunk`` rows (one host sync), None = all valid."""
    if valid is None:
        return None
    blocks = -(-n // chunk)
    padded = F.pad(valid.to(torch.int32), (0, blocks * chunk - n))
    return padded.view(blocks, chunk).sum(dim=1).tolist()


@dataclass(frozen=True)
class _FusedMle:
    """fairseq's label-smoothed NLL folded into the L_pred kernel: the kernel's scalar output is
    ``(1 - alpha) mle + alpha L_pred`` (see :func:`mle_and_soft_unlikelihood`)."""

    target: Tensor  # (N,) long
    alpha: float
    smoothing: float  # fairseq's epsilon
    ignore_index: int  # padding

    def coefficients(self, vocab: int):
        """``(eps_i, nll weight)`` of fairseq's ``(1 - eps - eps_i) nll + eps_i smooth`` (the
        MLE term's gradient needs them; its value is fairseq's own function)."""
        eps_i = self.smoothing / (vocab - 1)
        return eps_i, 1.0 - self.smoothing - eps_i


class _SoftUnlikelihood(torch.autograd.Function):
    """L_pred summed over the valid rows (a scalar) or per row, with the gradient computed in the
    forward pass block by block (:func:`_soft_ul_block`) and only scaled by the backward pass.
    With ``fused`` (log-probabilities only) the output is ``(1 - alpha) mle + alpha L_pred`` and
    the stored gradient is that of the sum; its three parts ``(mle, nll, L_pred)`` come as a
    second, non-differentiable output.

    Rows that are not valid (padding) add nothing and get a zero gradient: a block with no
    valid row is skipped; in a mixed block the invalid rows are computed with the others and
    then overwritten with 0 (``masked_fill``: whatever they hold, inf or nan included, does
    not leak). The stored gradient is scaled in place; a second backward pass through the same
    graph (``retain_graph=True``) rescales it by the ratio of the two output gradients, or
    returns zeros for a zero output gradient."""

    @staticmethod
    def forward(ctx, s: Tensor, z_t: Tensor, valid: Optional[Tensor], temperature: float, eps: float,
                chunk: int, log_probs: bool, per_row: bool, fused: Optional[_FusedMle], overwrite_teacher: bool):
        n, vocab = s.shape
        dtype = torch.promote_types(s.dtype, torch.float32)
        need_grad = ctx.needs_input_grad[0]
        out = s.new_zeros(n, dtype=dtype)
        grad = None
        if need_grad:
            # a block's teacher rows are read before its gradient is written: the teacher's
            # buffer can hold the gradient (no fresh (N, V) pages to fault in)
            reuse = overwrite_teacher and z_t.dtype == dtype and z_t.is_contiguous()
            grad = z_t if reuse else s.new_empty(s.shape, dtype=dtype)
        scale, shift, target_shift = 1.0, 0.0, 0.0
        if fused is not None:
            eps_i, nll_weight = fused.coefficients(vocab)
            scale, shift, target_shift = fused.alpha, -(1.0 - fused.alpha) * eps_i, -(1.0 - fused.alpha) * nll_weight
        counts = _block_row_counts(valid, n, chunk)
        for block, start in enumerate(range(0, n, chunk)):
            stop = min(n, start + chunk)
            rows = slice(start, stop)
            if counts is not None and counts[block] == 0:
                if grad is not None:
                    grad[rows].zero_()
                continue
            grad_rows = grad[rows] if grad is not None else None
            _soft_ul_block(s[rows], z_t[rows], out[rows], grad_rows, temperature, eps, log_probs, scale, shift)
            if fused is not None and grad_rows is not None:
                positions = torch.arange(stop - start, device=s.device)
                grad_rows.index_put_((positions, fused.target[rows]), grad_rows.new_tensor(target_shift),
                                     accumulate=True)
            if counts is not None and counts[block] < stop - start:
                invalid = ~valid[rows]
                out[rows].masked_fill_(invalid, 0.0)
                if grad_rows is not None:
                    grad_rows.masked_fill_(invalid.unsqueeze(-1), 0.0)
        ctx.grad, ctx.scale, ctx.per_row, ctx.input_dtype = grad, 1.0, per_row, s.dtype
        if fused is None:
            return out if per_row else out.sum()
        # fairseq's own label-smoothed NLL (the value the plain criterion logs); imported here, not at
        # module level, so that the core stays importable without fairseq
        from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

        mle, nll = label_smoothed_nll_loss(s.to(dtype), fused.target, fused.smoothing,
                                           ignore_index=fused.ignore_index, reduce=True)
        pred = out.sum()
        parts = torch.stack([mle, nll, pred])
        ctx.mark_non_differentiable(parts)
        return (1.0 - fused.alpha) * mle + fused.alpha * pred, parts

    @staticmethod
    def backward(ctx, grad_out: Tensor, *unused):
        grad = ctx.grad
        if ctx.per_row:  # per-row output gradients: a new tensor, the stored one stays as it is
            scaled = grad * grad_out.to(grad.dtype).unsqueeze(-1)
        else:
            g = float(grad_out)
            if g == 0.0:
                scaled = torch.zeros_like(grad)
            else:
                scaled = grad.mul_(g / ctx.scale) if g != ctx.scale else grad
                ctx.scale = g
        return scaled.to(ctx.input_dtype), None, None, None, None, None, None, None, None, None


def soft_unlikelihood(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Optional[Tensor] = None,
    temperature: float = 1.0,
    eps: float = 1e-6,
    reduce: bool = True,
    chunk_elements: Optional[int] = None,
    student_log_probs: bool = False,
    overwrite_teacher: bool = False,
) -> Tensor:
    """Soft unlikelihood L_pred (Eq. 6–7).

    Args:
        student_logits: ``(B, T, V)`` pre-softmax scores z of the student; with
            ``student_log_probs=True`` instead its log-probabilities ``log_softmax(z)`` (the
            tensor a criterion already has for its NLL; temperature must then be 1).
        teacher_logits: ``(B, T, V)`` those of the teacher (no gradient is taken through them).
        mask: ``(B, T)`` bool, True at real target positions (padding excluded); None = all.
            Masked-out positions add nothing and get no gradient, whatever they hold.
        temperature: t of Eq. 7, applied to both softmaxes: ``p = softmax(z / t)``.
        eps: ``1 - p_S`` is floored at ``eps`` (see :func:`log1mexp`).
        reduce: sum over positions (scalar) if True, else per-position values ``(B, T)``.
        chunk_elements: positions are processed ``max(1, chunk_elements // V)`` at a time
            (:class:`_SoftUnlikelihood`); None = 2^17 on CPU, 2^22 on other devices. The value
            and the gradient do not depend on it.
        student_log_probs: see ``student_logits``; value and gradient (through the caller's
            log-softmax) are those of the logits form.
        overwrite_teacher: the gradient is stored in ``teacher_logits``' buffer (float32 or
            wider, contiguous, without gradient; otherwise a new tensor is used), which saves
            allocating an ``(N, V)`` tensor: the caller must not read the teacher logits after
            the call.

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
    chunk = _rows_per_block(student_logits, chunk_elements)
    valid = None
    if mask is not None:
        if mask.shape != student_logits.shape[:-1]:
            raise ValueError(f"mask {tuple(mask.shape)} != positions {tuple(student_logits.shape[:-1])}")
        valid = mask.reshape(-1).to(torch.bool)
    value = _SoftUnlikelihood.apply(
        student_logits.reshape(-1, vocab), teacher_logits.detach().reshape(-1, vocab), valid,
        float(temperature), float(eps), chunk, bool(student_log_probs), not reduce, None,
        _may_overwrite(teacher_logits, overwrite_teacher),
    )
    return value if reduce else value.view(student_logits.shape[:-1])


def mle_and_soft_unlikelihood(
    log_probs: Tensor,
    target: Tensor,
    teacher_logits: Tensor,
    alpha: float,
    smoothing: float,
    ignore_index: int,
    eps: float = 1e-6,
    chunk_elements: Optional[int] = None,
    overwrite_teacher: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(1 - alpha) L_mle + alpha L_pred`` (the first two terms of Eq. 13) at temperature 1, in
    one pass over the student's log-probabilities.

    ``L_mle`` is fairseq's ``label_smoothed_nll_loss(log_probs, target, smoothing,
    ignore_index, reduce=True)``, ``L_pred`` is :func:`soft_unlikelihood` over the same
    positions. The value and the gradient are those of the two terms computed apart; computed
    together, the gradient of both with respect to the log-probabilities is written by the
    L_pred kernel while each block of rows is in the cache, instead of being assembled from
    four ``(N, V)`` tensors (the NLL's zero-filled scatter, the smoothing term's broadcast,
    L_pred's, and their sums) by autograd.

    Args:
        log_probs: ``(B, T, V)`` the student's ``log_softmax`` (the tensor to differentiate).
        target: ``(B, T)`` long gold tokens; positions equal to ``ignore_index`` are padding
            for both terms.
        teacher_logits: ``(B, T, V)`` the negative teacher's logits (a constant).
        alpha: the weight of Eq. 13 (any value; ``alpha == 0`` gives the MLE term alone).
        smoothing: fairseq's label-smoothing epsilon.
        eps: ``1 - p_S`` is floored at ``eps`` (see :func:`log1mexp`).
        chunk_elements, overwrite_teacher: as in :func:`soft_unlikelihood`.

    Returns:
        ``(weighted, mle, nll, pred)``: the differentiable scalar
        ``(1 - alpha) mle + alpha pred``, then the label-smoothed NLL, the plain NLL and L_pred
        (scalars, without gradient), each summed over the non-padding positions.
    """
    if log_probs.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(log_probs.shape)} != teacher {tuple(teacher_logits.shape)}")
    if target.shape != log_probs.shape[:-1]:
        raise ValueError(f"target {tuple(target.shape)} != positions {tuple(log_probs.shape[:-1])}")
    vocab = log_probs.size(-1)
    flat_target = target.reshape(-1)
    fused = _FusedMle(flat_target, float(alpha), float(smoothing), int(ignore_index))
    weighted, parts = _SoftUnlikelihood.apply(
        log_probs.reshape(-1, vocab), teacher_logits.detach().reshape(-1, vocab), flat_target.ne(ignore_index),
        1.0, float(eps), _rows_per_block(log_probs, chunk_elements), True, False, fused,
        _may_overwrite(teacher_logits, overwrite_teacher),
    )
    return weighted, parts[0], parts[1], parts[2]
