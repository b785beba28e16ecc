r"""Trie-constrained policy update of KID (paper section 3.3, Eq. 3 and Algorithm 1), batched.

One call updates the next-token distributions of all hypotheses at once: ``log_probs`` and
``demo_weights`` have shape ``(N, V)`` with ``N = batch x beam`` and ``V`` the vocabulary.

Objective
---------
For a row, let :math:`\pi` be the model's distribution (fixed), :math:`\pi^* =
\mathrm{softmax}(\theta)` the updated policy (:math:`\theta` initialised to
:math:`\log\pi`), and :math:`R(a) \ge 0` the demonstration reward of token ``a`` (1 for the
token ids of the knowledge demonstrations :math:`\mathbb{V}`, 0 elsewhere; ``demo_weights``
may give other non-negative weights). We maximise

.. math::

    J(\theta) = \log \mathbb{E}_{a \sim \pi}\Big[\frac{\pi^*(a)}{\pi(a)} R(a)\Big]
                - \beta\, \mathrm{KL}(\pi \,\|\, \pi^*)
              = \log \sum_a \pi^*(a) R(a) - \beta \sum_a \pi(a) \log\frac{\pi(a)}{\pi^*(a)}.

Mapping to the paper's Eq. 3: the first term is the importance-weighted knowledge gain --
actions are collected off-policy from the vanilla policy :math:`\pi_t` and re-weighted by
:math:`\pi^*_t/\pi_t`; the expectation is computed *exactly* over the vocabulary (no sampling
noise). The knowledge gain :math:`r_t` is taken in log space, as the log-probability that
:math:`\pi^*` assigns to the demonstration set (the paper writes it as a sum of
log-probabilities of the demonstration tokens, the authors' code as
``-log(sum(p* . onehot(V)))``; we follow the code: with a sum of logs a single improbable
demonstration token dominates the gradient). The penalty is the paper's
:math:`\mathrm{KL}(\pi_t \| \pi^*_t)` (the authors' code used the reverse direction).

Gradient (closed form, no autograd, so it works under ``torch.no_grad``), with
:math:`M = \sum_a \pi^*(a) R(a)`:

.. math::

    \partial J / \partial \theta_j = \pi^*_j (R_j - M) / M - \beta (\pi^*_j - \pi_j).

We take ``steps`` (K; default ``KIDOptions.steps``) Adam ascent steps on :math:`\theta`,
element-wise, for all rows at once (Adam is per-coordinate, so this is exactly K per-row Adam
runs). Tokens with :math:`\pi_j = 0` (``-inf``) have zero gradient and stay impossible.

For binary rewards the maximiser is known: :math:`\pi^*` rescales the demonstration tokens
uniformly so that their mass is :math:`M^* = (1 + \beta p)/(1 + \beta)` with
:math:`p = \pi(\mathbb{V})`; :math:`\beta \to \infty` leaves :math:`\pi` unchanged,
:math:`\beta \to 0` puts all mass on :math:`\mathbb{V}`. K Adam steps of size ``lr`` move the
logits of :math:`\mathbb{V}` by at most about ``2 K lr`` relative to the rest, towards it.

Adaptive KL (PPO-style, Algorithm 1)
------------------------------------
After the update, per row: :math:`\beta \leftarrow 2\beta` if :math:`\mathrm{KL} \ge
2\sigma`, :math:`\beta \leftarrow \beta/2` if :math:`\mathrm{KL} \le \sigma/2`, else
unchanged (clamped to ``[beta_min, beta_max]`` so it can neither underflow to 0 nor overflow
to inf over long generations). The new :math:`\beta` is used at the next decoding step of the
same hypothesis. Rows without demonstrations (or whose demonstrations all have probability
0) are not updated: their log-probs are returned bit-identical and their :math:`\beta` is left
unchanged (the controller only reacts to updates it made).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Tuple

import torch
from torch import Tensor

from informative_dialogue.kid.options import KIDOptions

logger = logging.getLogger(__name__)

__all__ = ["PolicyUpdateResult", "kid_policy_update", "optimal_demo_mass"]


@dataclass
class PolicyUpdateResult:
    """Output of :func:`kid_policy_update`.

    Attributes:
        log_probs: (N, V) updated log-probabilities log pi*, same dtype/device as the input;
            rows not updated are bit-identical to the input.
        beta: (N,) float32 KL weights for the next step.
        kl: (N,) float32 KL(pi || pi*) of this step (0 for rows not updated).
        updated: (N,) bool, rows that were updated.
    """

    log_probs: Tensor
    beta: Tensor
    kl: Tensor
    updated: Tensor


def optimal_demo_mass(p: Tensor, beta: Tensor) -> Tensor:
    """Demonstration mass of the exact maximiser of J for binary rewards: (1 + beta p) / (1 + beta)."""
    return (1.0 + beta * p) / (1.0 + beta)


def kid_policy_update(
    log_probs: Tensor,
    demo_weights: Tensor,
    beta: Tensor,
    steps: int = KIDOptions.steps,
    lr: float = KIDOptions.lr,
    sigma: float = KIDOptions.sigma,
    beta_min: float = 1e-6,
    beta_max: float = 1e6,
    adam_betas: Tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
) -> PolicyUpdateResult:
    """K Adam steps on the policy of every row that has demonstrations (see module doc).

    Args:
        log_probs: (N, V) log-probabilities of the model's step distribution (may hold
            ``-inf``); never modified.
        demo_weights: (N, V) bool mask or non-negative float weights of the demonstration
            tokens; a row of zeros means "no demonstrations".
        beta: (N,) current KL weights (> 0).
        steps: K, number of Adam steps (0: nothing is updated); defaults: :class:`KIDOptions`.
        lr: Adam step size (in logit units; each step moves a logit by about ``lr``).
        sigma: target KL divergence of the adaptive beta.
        beta_min, beta_max: clamp of the adapted beta.
        adam_betas, adam_eps: Adam's moment decay rates and epsilon.

    Returns:
        :class:`PolicyUpdateResult`; ``log_probs`` is a new tensor.
    """
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must be (N, V), got {tuple(log_probs.shape)}")
    if demo_weights.shape != log_probs.shape:
        raise ValueError(f"demo_weights {tuple(demo_weights.shape)} != log_probs {tuple(log_probs.shape)}")
    n = log_probs.size(0)
    if beta.shape != (n,):
        raise ValueError(f"beta must be ({n},), got {tuple(beta.shape)}")
    if steps < 0 or not (math.isfinite(lr) and lr > 0) or not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"need steps >= 0 and finite lr > 0, sigma > 0 (got {steps}, {lr}, {sigma})")

    device = log_probs.device
    beta32 = beta.to(device=device, dtype=torch.float32)
    weights = demo_weights.to(device=device, dtype=torch.float32)
    if bool((weights < 0).any()):
        raise ValueError("demo_weights must be non-negative")
    kl_all = torch.zeros(n, device=device, dtype=torch.float32)

    # a row is updated when it has a demonstration token of non-zero probability
    # (``> -inf`` is False for -inf and NaN)
    has_demo = ((weights > 0) & (log_probs > float("-inf"))).any(dim=1)
    if steps == 0 or not bool(has_demo.any()):
        return PolicyUpdateResult(log_probs.clone(), beta32.clone(), kl_all, torch.zeros_like(has_demo))

    rows = has_demo.nonzero(as_tuple=True)[0]
    # renormalise (robust to inputs that are not exactly normalised); float32 maths
    lp = log_probs.index_select(0, rows).float().log_softmax(dim=-1)
    r = weights.index_select(0, rows)
    b = beta32.index_select(0, rows).unsqueeze(1)
    pi = lp.exp()
    b_pi = b * pi
    one_plus_b = 1.0 + b
    tiny = torch.finfo(torch.float32).tiny

    # theta, m, v are private buffers: updated in place
    theta = lp.clone()
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    b1, b2 = adam_betas
    for k in range(1, steps + 1):
        q = theta.softmax(dim=-1)
        mass = (q * r).sum(dim=-1, keepdim=True).clamp_min(tiny)
        # dJ/dtheta = q (r - M) / M - beta (q - pi) = q (r / M - 1 - beta) + beta pi
        grad = (r / mass).sub_(one_plus_b).mul_(q).add_(b_pi)
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (v / (1 - b2 ** k)).sqrt_().add_(adam_eps)
        theta.addcdiv_(m, denom, value=lr / (1 - b1 ** k))  # -inf stays -inf (the step is 0)

    new_lp = theta.log_softmax(dim=-1)
    kl = torch.where(lp > float("-inf"), pi * (lp - new_lp), torch.zeros_like(lp)).sum(dim=-1).clamp_min(0.0)

    b_row = b.squeeze(1)
    new_b = torch.where(kl >= 2 * sigma, b_row * 2, torch.where(kl <= sigma / 2, b_row / 2, b_row))
    new_b = new_b.clamp(beta_min, beta_max)

    out = log_probs.index_put((rows,), new_lp.to(log_probs.dtype))
    beta_out = beta32.index_put((rows,), new_b)
    kl_all = kl_all.index_put((rows,), kl)
    return PolicyUpdateResult(out, beta_out, kl_all, has_demo)
