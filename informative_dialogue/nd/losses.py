"""Negative distillation (ND) losses, as pure tensor functions (paper: shared/papers/negative_distillation.txt).

Notation: the negative teacher N (trained with MLE on the high-source-entropy pairs D_N) and the
student S see the same source Q and the same gold prefix r_<i (teacher forcing). Shapes use
B = batch, T = target length, S = key length, V = vocabulary, C = model dimension, H = heads.

Sign conventions (all terms are *minimised*, so every ND term pushes the student AWAY from the
teacher):

- ``soft_unlikelihood`` (Eq. 6–7, computed in ``soft_unlikelihood.py``):
  ``-sum_i sum_k p_N(k) log(1 - p_S(k))`` >= 0. It is 0 when the student gives no probability
  to what the teacher predicts, and grows without bound as p_S(k) -> 1 on a token the teacher
  likes. Minimising it lowers p_S where p_N is high.
- ``mrse`` (Eq. 8, "mean reverse square error"): ``mean(exp(-(A - B)^2))`` in (0, 1]. It is 1
  for identical features and -> 0 as they move apart; minimising it therefore *increases*
  the distance ``|A - B|`` (d/dA = -2 (A - B) exp(-(A - B)^2): gradient descent moves A away
  from B). It is bounded, so a student already far from the teacher gets a vanishing push,
  which is what keeps the student from running off while the MLE term holds it to the data.
- ``progressive_alpha`` (Eq. 14–16): ``alpha(s) = lambda * sigma'(beta (s - gamma))``, a bump
  peaking at ``lambda / 4`` when ``s = gamma``.
- ``combine`` (Eq. 13): ``(1 - alpha) L_mle + alpha (L_pred + sum_l L_hid^l + sum_l L_att^l)``,
  assembled as ``mle_and_pred`` (its first two terms, which the fused kernel
  ``soft_unlikelihood.mle_and_soft_unlikelihood`` computes in one pass) plus
  ``alpha * sum(features)`` (``add_features``): the criterion assembles it the same way
  whichever kernel gave the first two terms.
- ``scaled_mrse``: the MRSE terms of one kind, each times the criterion's ``sample_size``
  (fairseq divides the loss by it, so each MRSE, a mean, enters "per element").
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from informative_dialogue.nd.soft_unlikelihood import log1mexp

__all__ = [
    "hard_unlikelihood", "mrse", "scaled_mrse",
    "progressive_alpha", "mean_progressive_alpha", "mle_and_pred", "add_features", "combine",
]


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


def scaled_mrse(students: Sequence[Tensor], teachers: Sequence[Tensor], mask: Optional[Tensor],
                scale: float) -> List[Tensor]:
    """``[mrse(s, t, mask) * scale for each layer]``: L_hid^l or L_att^l (Eq. 9, 12) of every
    layer, scaled by the criterion's ``sample_size``."""
    if len(students) != len(teachers):
        raise ValueError(f"{len(students)} student layers but {len(teachers)} teacher layers")
    return [mrse(s, t, mask) * scale for s, t in zip(students, teachers)]


def mle_and_pred(mle: Tensor, alpha: float, pred: Optional[Tensor] = None) -> Tensor:
    """The first two terms of Eq. 13, ``(1 - alpha) * mle + alpha * pred`` (pred absent: 0);
    ``mle`` itself when ``alpha == 0``."""
    if alpha == 0.0:
        return mle
    weighted = (1.0 - alpha) * mle
    return weighted + alpha * pred if pred is not None else weighted


def add_features(head: Tensor, alpha: float, features: Sequence[Tensor] = ()) -> Tensor:
    """Eq. 13 from its first two terms ``head`` (:func:`mle_and_pred`):
    ``head + alpha * (sum_l L_hid^l + sum_l L_att^l)``; ``head`` itself when there is no
    feature term or ``alpha == 0``."""
    if alpha == 0.0 or not features:
        return head
    total = features[0]
    for term in features[1:]:
        total = total + term
    return head + alpha * total


def combine(mle: Tensor, alpha: float, pred: Optional[Tensor] = None,
            hid: Sequence[Tensor] = (), att: Sequence[Tensor] = ()) -> Tensor:
    """Eq. 13: ``(1 - alpha) * mle + alpha * (pred + sum(hid) + sum(att))``; absent terms are 0.

    With ``alpha == 0`` this returns ``mle`` itself (same value and gradients), whatever the
    other terms hold.
    """
    return add_features(mle_and_pred(mle, alpha, pred), alpha, list(hid) + list(att))
