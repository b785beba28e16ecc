r"""KID's policy update solved in closed form at a target KL: the sigma-solver.

:func:`~informative_dialogue.kid.policy_update.kid_policy_update` follows Algorithm 1
literally (K Adam steps on the logits, adaptive beta). At the paper's settings it barely
acts: K = 3 steps of lr 0.1 move a logit by at most about 0.6 nats and the KL to the model's
distribution stays far below the target sigma, so sigma -- the paper's "strength of knowledge
infusion" -- never binds. This module computes, for every row with demonstrations at once,
the policy that goes as far as the objective wants *up to* KL(pi || pi*) = sigma.

Objective and closed form
-------------------------
Same objective and KL direction as :mod:`~informative_dialogue.kid.policy_update`: for a
row with model distribution :math:`\pi` (fixed), binary rewards :math:`R = 1_D` on the
demonstration tokens :math:`D` and :math:`p = \pi(D)`, :math:`q = 1 - p`,

.. math::

    \max_{\pi^*} \; \log \pi^*(D) - \beta\,\mathrm{KL}(\pi \,\|\, \pi^*)
    \quad \text{s.t.} \quad \mathrm{KL}(\pi \,\|\, \pi^*) \le \sigma .

(``beta = 0``, the default, drops the penalty: then the demonstration mass is maximised
under the trust region alone, and any increasing function of :math:`\pi^*(D)` -- the
paper's linear :math:`\mathbb{E}_{\pi}[(\pi^*/\pi) r]` included -- has the same solution.)
For a fixed mass :math:`m = \pi^*(D)` the objective's first
term is fixed, and :math:`\mathrm{KL}(\pi\|\pi^*) = \sum_a \pi_a \log(\pi_a/\pi^*_a)` is
minimised over :math:`\pi^*` with :math:`\pi^*(D) = m` by rescaling :math:`\pi` inside and
outside :math:`D` (Lagrange / log-sum inequality per block):

.. math::

    \pi^*_a = \pi_a\,\frac{m}{p} \;(a \in D), \qquad
    \pi^*_a = \pi_a\,\frac{1-m}{q} \;(a \notin D), \qquad
    \mathrm{KL} = p\log\frac{p}{m} + q\log\frac{q}{1-m},

the binary KL, which is 0 at :math:`m = p` and increases strictly for :math:`m \ge p` (up
to :math:`\infty` at :math:`m = 1`). Equivalently :math:`\pi^*` is the exponential tilt
:math:`\pi^*_a \propto \pi_a e^{\delta 1_D(a)}` with log-odds shift :math:`\delta \ge 0`,
:math:`A(\delta) = \log(p e^\delta + q)`, :math:`m = p e^{\delta - A}` and

.. math::

    \mathrm{KL}(\delta) = A(\delta) - p\delta = \log\big(p e^{q\delta} + q e^{-p\delta}\big),
    \qquad \mathrm{KL}'(\delta) = m - p = \frac{pq\,(e^\delta - 1)}{p e^\delta + q},
    \qquad \mathrm{KL}''(\delta) = m(1-m) > 0 .

The objective is concave in :math:`m`, so its constrained maximiser is
:math:`\min(\delta_\beta, \delta_\sigma)`: :math:`\delta_\beta = \log(1 + 1/(\beta p))` is the
unconstrained maximiser (demo mass :math:`(1+\beta p)/(1+\beta)`, exactly
:func:`~informative_dialogue.kid.policy_update.optimal_demo_mass`; :math:`+\infty` for
``beta = 0``), taken when its KL is already below sigma, and :math:`\delta_\sigma` is the root
of :math:`\mathrm{KL}(\delta) = \sigma`. KL is convex and increasing in :math:`\delta`, so
Newton's method lands right of the root after its first step (the tangent of a convex function
lies below it) and then descends to it monotonically. The iteration is vectorised over rows
(no loop over rows), starts from the best of three approximations of the root -- quadratic
:math:`\sqrt{2\sigma/(pq)}`, :math:`p \to 0`: :math:`\log(e^\sigma - 1) - \log p`, and the upper
bound :math:`(\sigma - \log p)/q` (:math:`\mathrm{KL}(\delta) \ge q\delta + \log p`), which
also caps the first step -- and takes at most 5 steps for :math:`\pi(D)` anywhere in
:math:`[10^{-300}, 1 - 10^{-15}]` and sigma in :math:`[10^{-10}, 500]`. It aims at
:math:`\sigma(1 - 10^{-9})` and stops within :math:`5 \cdot 10^{-10}\sigma` above it, so the
KL lies in :math:`[\sigma(1 - 10^{-9}), \sigma)` (float64; the float32 output's own rounding
adds about :math:`10^{-6}` relative). All per-row scalars are float64 and in log space
(:math:`\log p` and :math:`\log q` are separate log-sum-exps, so :math:`p \approx 1` and
:math:`p \approx 0` keep their precision); the (N, V) work is in the input's dtype
(float32/float64; half types are computed in float32 and cast back): one gather, one copy
with the demonstrations set to -inf, one ``log_softmax`` of it (for :math:`\log q`), one add
and one scatter.

Rows left alone (bit-identical output, ``updated`` False, KL 0): rows without demonstrations,
rows whose demonstrations all have probability 0, and rows whose mass is already all on
:math:`D` (:math:`q` underflows float64). A row whose root lies beyond a shift of
``max_shift`` nats (outside mass below about ``sigma / max_shift``) is given that shift and
ends below sigma. Tokens of probability 0 stay at probability 0.

Shapes
------
``log_probs`` (N, V); demonstrations as ``demo_index`` (N, D_max) long token ids with an
optional ``demo_valid`` (N, D_max) bool (padding slots False; duplicates allowed), or a dense
``demo_mask`` (N, V) bool (the representation
:func:`~informative_dialogue.kid.policy_update.kid_policy_update` takes; float weights count
as demonstrations where > 0), or flat ``(rows, tokens)`` pairs through
:func:`pairs_to_index`. Output (N, V) log pi* and (N,) KL, demonstration mass, shift and
``updated``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = ["SigmaSolveResult", "kl_of_shift", "pairs_to_index", "sigma_solve"]


@dataclass
class SigmaSolveResult:
    """Output of :func:`sigma_solve`.

    Attributes:
        log_probs: (N, V) log pi*, the input's dtype and device; rows not updated are
            bit-identical to the input.
        kl: (N,) float32 KL(pi || pi*) of the solution (0 on rows not updated).
        updated: (N,) bool, rows that were changed.
        demo_mass: (N,) float32 pi*(D) (pi(D) of the renormalised input on rows not
            updated; 0 for rows without demonstrations).
        shift: (N,) float64 log-odds shift delta given to the demonstration tokens (0 on rows
            not updated).
    """

    log_probs: Tensor
    kl: Tensor
    updated: Tensor
    demo_mass: Tensor
    shift: Tensor


def kl_of_shift(log_p: Tensor, log_q: Tensor, delta: Tensor) -> Tensor:
    """KL(pi || pi*) of the tilt by ``delta`` on D: ``log(p e^{q delta} + q e^{-p delta})``.

    All arguments broadcast; ``log_p``, ``log_q`` are log pi(D) and log pi(not D).
    """
    return _kl_and_slope(log_p.exp(), log_q.exp(), log_p, log_q, delta)[0]


def _kl_and_slope(p: Tensor, q: Tensor, log_p: Tensor, log_q: Tensor, delta: Tensor) -> Tuple[Tensor, Tensor]:
    """(KL(delta), KL'(delta) = m - p) without cancellation.

    KL: small shifts take log1p of the two expm1 terms (they cancel at first order, not to
    eps * log p), large ones log(p e^{q delta} + q e^{-p delta}) (never A - p delta, which
    loses everything when q delta is small against delta). Slope: m q - p (1 - m), whose
    terms only cancel when delta is small (relative error eps / (q delta), harmless to Newton);
    m - p itself loses all digits when p and m are both close to 1.
    """
    qd, pd = q * delta, p * delta
    small = torch.log1p(p * torch.expm1(qd) + q * torch.expm1(-pd))
    large = torch.logaddexp(log_p + qd, log_q - pd)
    kl = torch.where(qd < 1.0, small, large).clamp_min_(0.0)
    log_a = torch.logaddexp(log_p + delta, log_q)  # A(delta) = log(p e^delta + q)
    m, u = (log_p + delta - log_a).exp(), (log_q - log_a).exp()  # pi*(D), 1 - pi*(D)
    return kl, m * q - p * u


def pairs_to_index(rows: Tensor, tokens: Tensor, n_rows: int) -> Tuple[Tensor, Tensor]:
    """Flat ``(row, token)`` pairs (P,), (P,) -> ``(demo_index, demo_valid)`` of shape (N, D_max).

    Vectorised (a stable sort by row, no loop over rows); D_max is the largest count of a row
    (at least 1).
    """
    if rows.shape != tokens.shape or rows.dim() != 1:
        raise ValueError(f"rows and tokens must be equal 1-D shapes, got {tuple(rows.shape)}, {tuple(tokens.shape)}")
    device = tokens.device
    rows = rows.to(device=device, dtype=torch.long)
    tokens = tokens.to(dtype=torch.long)
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n_rows):
        raise ValueError(f"row ids must lie in [0, {n_rows})")
    counts = torch.bincount(rows, minlength=n_rows)
    d_max = max(int(counts.max()) if n_rows else 0, 1)
    order = torch.sort(rows, stable=True).indices
    rows_s, toks_s = rows[order], tokens[order]
    start = counts.cumsum(0) - counts
    pos = torch.arange(rows.numel(), device=device) - start[rows_s]
    index = torch.zeros(n_rows, d_max, dtype=torch.long, device=device)
    valid = torch.zeros(n_rows, d_max, dtype=torch.bool, device=device)
    index[rows_s, pos] = toks_s
    valid[rows_s, pos] = True
    return index, valid


def _logsumexp_rows(x: Tensor) -> Tensor:
    """float64 (N,) log-sum-exp of the rows of ``x`` (-inf for rows of -inf).

    Read off one ``log_softmax`` at each row's maximum: log Z = max(x) - max(log_softmax(x))
    (rounding is monotone, so both maxima sit at the same token, where log_softmax lies in
    [-log V, 0]): the single exp pass of ``log_softmax``, where CPU ``torch.logsumexp`` costs
    about three, and no ``argmax`` (slow on CPU).
    """
    top = x.amax(dim=1)
    log_z = (top - x.log_softmax(dim=1).amax(dim=1)).double()
    return torch.where(top > float("-inf"), log_z, torch.full_like(log_z, float("-inf")))


def _dedup(index: Tensor, valid: Tensor, vocab: int) -> Tuple[Tensor, Tensor]:
    """Sorted (N, D) ids with duplicates and padding marked invalid (invalid slots hold ``vocab``)."""
    ids = index.masked_fill(~valid, vocab).sort(dim=1).values
    keep = ids < vocab
    keep[:, 1:] &= ids[:, 1:] != ids[:, :-1]
    return ids, keep


def _solve_shift(log_p: Tensor, log_q: Tensor, sigma: float, max_iter: int, max_shift: float) -> Tensor:
    """Root of KL(delta) = sigma per row (float64 (n,) in, (n,) out), by Newton from the right.

    Aims at sigma (1 - 1e-9) and stops once every row is within 5e-10 sigma above it, so the
    result's KL lies in [sigma (1 - 1e-9), sigma) up to float64 rounding.
    """
    p, q = log_p.exp(), log_q.exp()
    target, tol = sigma * (1.0 - 1e-9), sigma * 5e-10
    upper = ((sigma - log_p) / q).clamp_max(max_shift)  # KL(upper) >= sigma (or the cap)
    # start from the best of three approximations of the root: quadratic (small shift),
    # p -> 0 (KL ~ log(1 + p e^delta)) and the upper bound (q -> 0, KL ~ q delta + log p)
    guesses = torch.stack([(2.0 * sigma / (p * q)).sqrt(), math.log(math.expm1(sigma)) - log_p, upper], dim=1)
    guesses = torch.minimum(guesses.clamp_(min=0.0), upper.unsqueeze(1))
    kl = kl_of_shift(log_p.unsqueeze(1), log_q.unsqueeze(1), guesses)
    miss = (kl.log() - math.log(sigma)).abs().nan_to_num_(math.inf)
    delta = guesses.gather(1, miss.argmin(dim=1, keepdim=True)).squeeze(1)
    for it in range(max_iter):
        kl, slope = _kl_and_slope(p, q, log_p, log_q, delta)
        f = kl - target
        if it > 0 and bool((f <= tol).all()):  # from the second iterate on, f >= 0 (convexity)
            break
        # slope > 0 for delta > 0; the first step may start left of the root and overshoot
        # far, the upper bound caps it
        delta = (delta - f / slope).nan_to_num_(0.0).clamp_(0.0, max_shift)
        if it == 0:
            delta = torch.minimum(delta, upper)
    return delta


def sigma_solve(
    log_probs: Tensor,
    sigma: float,
    demo_index: Optional[Tensor] = None,
    demo_valid: Optional[Tensor] = None,
    *,
    demo_mask: Optional[Tensor] = None,
    beta: Union[float, Tensor, None] = None,
    max_iter: int = 30,
    max_shift: float = 1e30,
) -> SigmaSolveResult:
    """Per row, the policy of largest demonstration mass with KL(pi || pi*) <= sigma (module doc).

    Args:
        log_probs: (N, V) log-probabilities of the model's step distribution (may hold
            ``-inf``; renormalised per row); never modified.
        sigma: target KL (> 0), the strength of knowledge infusion.
        demo_index: (N, D_max) long token ids of each row's demonstrations (duplicates
            allowed, any order).
        demo_valid: (N, D_max) bool, which slots of ``demo_index`` hold a demonstration
            (default: all).
        demo_mask: (N, V) bool (or non-negative weights, > 0 = demonstration) instead of
            ``demo_index``.
        beta: optional KL weight of the objective (float or (N,) >= 0): rows whose
            unconstrained maximiser already has KL < sigma take it. Default 0 (none).
        max_iter: Newton iterations at most (converges in a handful).
        max_shift: the largest log-odds shift given to the demonstrations.

    Returns:
        :class:`SigmaSolveResult`; ``log_probs`` is a new tensor.
    """
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must be (N, V), got {tuple(log_probs.shape)}")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    n, vocab = log_probs.shape
    device = log_probs.device
    if (demo_index is None) == (demo_mask is None):
        raise ValueError("give exactly one of demo_index or demo_mask")
    if demo_mask is not None:
        if demo_mask.shape != log_probs.shape:
            raise ValueError(f"demo_mask {tuple(demo_mask.shape)} != log_probs {tuple(log_probs.shape)}")
        if demo_mask.dtype != torch.bool and bool((demo_mask < 0).any()):
            raise ValueError("demo_mask weights must be non-negative")
        mask = demo_mask.to(device) > 0 if demo_mask.dtype != torch.bool else demo_mask.to(device)
        pairs = mask.nonzero()
        ids, keep = _dedup(*pairs_to_index(pairs[:, 0], pairs[:, 1], n), vocab)
    else:
        if demo_index.dim() != 2 or demo_index.size(0) != n:
            raise ValueError(f"demo_index must be ({n}, D_max), got {tuple(demo_index.shape)}")
        valid = torch.ones_like(demo_index, dtype=torch.bool) if demo_valid is None else demo_valid
        if valid.shape != demo_index.shape:
            raise ValueError(f"demo_valid {tuple(valid.shape)} != demo_index {tuple(demo_index.shape)}")
        index = demo_index.to(device=device, dtype=torch.long)
        valid = valid.to(device=device, dtype=torch.bool)
        if bool(((index < 0) | (index >= vocab))[valid].any()):
            raise ValueError(f"demonstration token ids must lie in [0, {vocab})")
        ids, keep = _dedup(index, valid, vocab)
    beta_t: Optional[Tensor] = None  # None: beta = 0, no penalty
    if beta is not None:
        beta_t = torch.as_tensor(beta, dtype=torch.float64, device=device).expand(n)
        if bool((beta_t < 0).any()):
            raise ValueError("beta must be >= 0")

    out_kl = torch.zeros(n, dtype=torch.float32, device=device)
    out_shift = torch.zeros(n, dtype=torch.float64, device=device)
    out_mass = torch.zeros(n, dtype=torch.float32, device=device)
    not_updated = torch.zeros(n, dtype=torch.bool, device=device)
    if n == 0 or ids.size(1) == 0:
        return SigmaSolveResult(log_probs.clone(), out_kl, not_updated, out_mass, out_shift)

    work = log_probs if log_probs.dtype in (torch.float32, torch.float64) else log_probs.float()
    safe_ids = ids.clamp_max(vocab - 1)
    gathered = work.gather(1, safe_ids).masked_fill(~keep, float("-inf"))
    log_zd = gathered.logsumexp(dim=1).double()  # log of the (unnormalised) demonstration mass
    candidate = log_zd > float("-inf")  # False for no demonstrations, all -inf, or NaN
    if not bool(candidate.any()):
        return SigmaSolveResult(log_probs.clone(), out_kl, not_updated, out_mass, out_shift)

    all_rows = bool(candidate.all())
    rows = torch.arange(n, device=device) if all_rows else candidate.nonzero(as_tuple=True)[0]
    pick = (lambda t: t) if all_rows else (lambda t: t.index_select(0, rows))  # noqa: E731
    s_ids, s_keep, s_gathered, s_log_zd = pick(safe_ids), pick(keep), pick(gathered), pick(log_zd)
    # every candidate row has a valid first slot: point padding/duplicate slots at it
    # (scatters then write the same value twice, which is deterministic)
    fill_ids = torch.where(s_keep, s_ids, s_ids[:, :1])
    outside = work.clone() if all_rows else work.index_select(0, rows)  # a private copy
    outside.scatter_(1, fill_ids, float("-inf"))
    log_zo = _logsumexp_rows(outside)
    log_z = torch.logaddexp(s_log_zd, log_zo)  # renormalisation of the input
    act = log_zo > float("-inf")
    act &= (log_zo - log_z).exp() > 0  # False when (numerically) all the mass is on D already
    half = torch.full_like(log_z, -math.log(2.0))  # placeholder for rows not acted on
    log_p = torch.where(act, s_log_zd - log_z, half)
    log_q = torch.where(act, log_zo - log_z, half)

    delta = _solve_shift(log_p, log_q, float(sigma), max_iter, max_shift)
    # the unconstrained maximiser log(1 + 1/(beta p)) = softplus(-log beta - log p); inf at beta 0
    if beta_t is not None:
        delta = torch.minimum(delta, torch.nn.functional.softplus(-(pick(beta_t).log() + log_p)))
    delta = torch.where(act, delta, torch.zeros_like(delta))
    kl = torch.where(act, kl_of_shift(log_p, log_q, delta), torch.zeros_like(delta))

    # log pi* = log pi + log(m / p) on D and + log((1 - m) / q) elsewhere, with the float64
    # constants computed without cancellation: log(m / p) = -log(p + q e^-delta) and
    # log((1 - m) / q) = -log(p e^delta + q); minus log Z renormalises
    log_a = torch.logaddexp(log_p + delta, log_q)
    c_out = (-log_a - log_z).to(work.dtype).unsqueeze(1)
    c_in = (-torch.logaddexp(log_p, log_q - delta) - log_z).to(work.dtype).unsqueeze(1)
    new = outside.add_(c_out)  # -inf stays -inf; D's slots are overwritten next
    new.scatter_(1, fill_ids, torch.where(s_keep, s_gathered, s_gathered[:, :1]) + c_in)
    mass = torch.where(act, (log_p + delta - log_a).exp(), (s_log_zd - log_z).exp())

    all_act = bool(act.all())
    if all_rows and all_act:
        out = new.to(log_probs.dtype)
    else:
        out = log_probs.clone()
        if all_act:
            out.index_copy_(0, rows, new.to(log_probs.dtype))
        else:
            out.index_put_((rows[act],), new[act].to(log_probs.dtype))
    if all_rows:
        return SigmaSolveResult(out, kl.float(), act, mass.float(), delta)
    updated = not_updated.index_put((rows,), act)
    return SigmaSolveResult(out, out_kl.index_put_((rows,), kl.float()), updated,
                            out_mass.index_put_((rows,), mass.float()), out_shift.index_put_((rows,), delta))
