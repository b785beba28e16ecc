r"""KID's key/value update (the authors' release, PPLM-style), fairseq- and transformers-free.

The KID release does not update the logit vector: at every decoding step it perturbs the
decoder's cached keys and values, so that the model's next-token distribution moves towards
the knowledge demonstrations, and it carries that perturbation into later steps through the
cache. This module holds the model-independent part, batched over ``N`` rows (hypotheses):

* :func:`kv_perturbation`: ``K = steps`` gradient steps on an additive perturbation
  :math:`\Delta` of the cache (the release's / PPLM's ``perturb_past``);
* :func:`geometric_mix`: the next-token distribution
  :math:`\propto p_{\text{pert}}^{w}\, p_{\text{plain}}^{1-w}`.

The model interaction is the adapter's (:mod:`informative_dialogue.kid.hf_kv_decoding` for
Hugging Face causal LMs, the fairseq generator for fairseq decoders): it passes a ``step_fn``.

The update
----------
For a row with demonstration tokens :math:`D` (``demo_index`` / ``demo_valid``, as
:meth:`~informative_dialogue.kid.memory.KIDCore.demo_index` returns them), plain next-token
distribution :math:`p` (``plain_log_probs``, the model on the unperturbed text) and
perturbed distribution :math:`p_\Delta` = ``step_fn(past + Δ)``, the loss is

.. math::

    L(\Delta) = -\log \sum_{v \in D} p_\Delta(v)
                + \lambda\, \mathrm{KL}(p_\Delta \,\|\, p),
    \qquad \lambda = \texttt{kl\_scale}

(the KL direction of the release and PPLM; :math:`p` is floored at :math:`10^{-15}` inside
the log, as there). :math:`\Delta` starts at 0; step :math:`k = 1..K` takes the gradient
:math:`g` of the summed row losses with respect to :math:`\Delta` only
(``torch.autograd.grad``; the model's parameters get no ``.grad`` and are not changed) and,
per row :math:`r` and layer :math:`l`,

.. math::

    n_{r,l} \leftarrow \max\big(n_{r,l},\ \|(g^K_{r,l}, g^V_{r,l})\|_2\big), \qquad
    \Delta_{r,l} \leftarrow \Delta_{r,l} - \eta\, \frac{g_{r,l}}{(n_{r,l} + 10^{-15})^{\gamma}}

(:math:`\eta` = ``step_size``, :math:`\gamma` = ``gamma``; :math:`n` starts at 0, so it is the
running maximum over the steps of the joint key/value gradient norm, as in PPLM). Norms are
per row, so a row's result does not depend on the other rows of the batch. Rows without a
valid demonstration keep :math:`\Delta = 0` exactly and add nothing to the loss.

Costs: ``step_fn`` is called ``K`` times with gradients and once more without them, at the final
perturbation (its output is returned as ``KVUpdate.log_probs``, and an adapter may keep the cache
that call built as its new perturbed cache instead of stepping again); it is not called at all
when no row is updated. No autograd graph outlives the call (the release kept graphs alive across
decoding steps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["Past", "KVUpdate", "kv_perturbation", "geometric_mix", "demo_log_mass", "kl_divergence"]

Past = Sequence[Tuple[Tensor, Tensor]]  # per decoder layer (key, value), each (N, ..., T, d): rows on dim 0

_SMALL = 1e-15  # PPLM's SMALL_CONST: added to the gradient norm, floor of p_plain inside the KL's log
_LOG_SMALL = float(torch.tensor(_SMALL).log())


@dataclass
class KVUpdate:
    """The result of :func:`kv_perturbation` (``N`` rows).

    Attributes:
        deltas: per layer ``(key delta, value delta)``, the shapes of ``past``, detached;
            exactly 0 on rows not updated.
        updated: (N,) bool: rows with at least one valid demonstration, when ``steps > 0``.
        demo_mass: (N,) probability of the row's demonstrations under ``step_fn(past + deltas)``
            (after the last step) on updated rows, under ``plain_log_probs`` elsewhere (0 for
            rows without demonstrations).
        log_probs: (N, V) ``step_fn(past + deltas)``, from the final call without gradients;
            ``None`` when no row was updated (``step_fn`` was not called).
        steps: gradient steps taken (``steps`` when any row was updated, else 0).
    """

    deltas: List[Tuple[Tensor, Tensor]]
    updated: Tensor
    demo_mass: Tensor
    log_probs: Optional[Tensor] = None
    steps: int = 0


def demo_log_mass(log_probs: Tensor, demo_index: Tensor, demo_valid: Tensor) -> Tensor:
    r"""(N,) :math:`\log \sum_{v \in D_r} p_r(v)` of each row (``-inf`` for rows without
    demonstrations); ``log_probs`` (N, V), ``demo_index`` (N, D) long, ``demo_valid`` (N, D) bool.
    A token listed twice in a row counts once. Differentiable in ``log_probs``."""
    vocab = log_probs.size(-1)
    ids = demo_index.masked_fill(~demo_valid, vocab).sort(dim=1).values  # invalid slots last
    keep = ids < vocab
    keep[:, 1:] &= ids[:, 1:] != ids[:, :-1]
    picked = log_probs.gather(1, ids.clamp_max(vocab - 1))
    return picked.masked_fill(~keep, float("-inf")).logsumexp(dim=1)


def kl_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    r"""(N,) :math:`\mathrm{KL}(p \| q) = \sum_v p(v) (\log p(v) - \log q(v))` per row, with
    :math:`q` floored at :math:`10^{-15}` (PPLM) and terms where :math:`p = 0` counted as 0.
    Differentiable in ``log_p``."""
    p = log_p.exp()
    terms = p * (log_p - log_q.clamp_min(_LOG_SMALL))
    return torch.where(p > 0, terms, torch.zeros_like(terms)).sum(dim=-1)


def _row_view(x: Tensor, like: Tensor) -> Tensor:
    """(N,) -> (N, 1, ..., 1) broadcastable against ``like``."""
    return x.view((-1,) + (1,) * (like.dim() - 1))


def kv_perturbation(
    step_fn: Callable[[Past], Tensor],
    past: Past,
    plain_log_probs: Tensor,
    demo_index: Tensor,
    demo_valid: Tensor,
    *,
    steps: int,
    step_size: float,
    kl_scale: float,
    gamma: float,
) -> KVUpdate:
    """The perturbation of the cached keys/values after ``steps`` gradient steps (module doc).

    Args:
        step_fn: ``step_fn(perturbed_past) -> (N, V)`` next-token log-probs: the model run one
            step (on the newest token) with ``perturbed_past`` as its cache. It must be
            differentiable in ``perturbed_past`` and must not modify ``past`` nor any cache the
            adapter keeps (run on a copy: ``perturbed_past`` holds fresh tensors ``past + Δ``
            at every call). Called under ``torch.enable_grad()`` (K times) and
            ``torch.no_grad()`` (once, at the end).
        past: per layer ``(key, value)``, each (N, ..., T, d) with rows on dim 0 (e.g. Hugging
            Face's (N, heads, T, head_dim)); read only, need not require gradients.
        plain_log_probs: (N, V) the model's unperturbed next-token log-probs (the KL target).
        demo_index: (N, D_max) long demonstration token ids (``KIDCore.demo_index``).
        demo_valid: (N, D_max) bool, False on padding slots.
        steps: K >= 0 (0: nothing is updated).
        step_size: eta >= 0 (0: the deltas stay 0; rows are still "updated").
        kl_scale: lambda >= 0.
        gamma: exponent of the norm >= 0 (0: plain gradient steps).

    Returns:
        :class:`KVUpdate`.
    """
    n = plain_log_probs.size(0)
    if demo_index.shape != demo_valid.shape or demo_index.dim() != 2 or demo_index.size(0) != n:
        raise ValueError(f"demo_index and demo_valid must both be ({n}, D), got {tuple(demo_index.shape)}, "
                         f"{tuple(demo_valid.shape)}")
    for key, value in past:
        if key.size(0) != n or value.size(0) != n:
            raise ValueError(f"every past tensor must have {n} rows on dim 0, got {tuple(key.shape)}, "
                             f"{tuple(value.shape)}")
    if steps < 0 or step_size < 0 or kl_scale < 0 or gamma < 0:
        raise ValueError(f"steps, step_size, kl_scale and gamma must be >= 0, got {steps}, {step_size}, "
                         f"{kl_scale}, {gamma}")
    plain = plain_log_probs.detach()
    has_demo = demo_valid.any(dim=1)
    updated = has_demo if steps > 0 else torch.zeros_like(has_demo)
    deltas = [(torch.zeros_like(k), torch.zeros_like(v)) for k, v in past]
    if not bool(updated.any()):
        mass = demo_log_mass(plain, demo_index, demo_valid).exp()
        return KVUpdate([(k.detach(), v.detach()) for k, v in deltas], updated, mass, None, 0)

    base = [(k.detach(), v.detach()) for k, v in past]
    norms = [torch.zeros(n, dtype=torch.float64, device=plain.device) for _ in base]
    rows = updated.nonzero().squeeze(1)  # the loss sees only these rows: the others get exact zeros
    index, valid, target = demo_index.index_select(0, rows), demo_valid.index_select(0, rows), plain.index_select(0, rows)
    for _ in range(steps):
        leaves = [(dk.requires_grad_(True), dv.requires_grad_(True)) for dk, dv in deltas]
        with torch.enable_grad():
            log_probs = step_fn([(k + dk, v + dv) for (k, v), (dk, dv) in zip(base, leaves)]).index_select(0, rows)
            loss = -demo_log_mass(log_probs, index, valid)
            if kl_scale:
                loss = loss + kl_scale * kl_divergence(log_probs, target)
            grads = torch.autograd.grad(loss.sum(), [t for pair in leaves for t in pair], allow_unused=True)
        new: List[Tuple[Tensor, Tensor]] = []
        for layer, (dk, dv) in enumerate(leaves):
            # a row whose demonstrations all have probability 0 has an infinite loss: no step there
            gk, gv = (torch.zeros_like(d) if g is None else torch.nan_to_num(g.detach(), 0.0, 0.0, 0.0)
                      for g, d in ((grads[2 * layer], dk), (grads[2 * layer + 1], dv)))
            norm = (gk.double().flatten(1).pow(2).sum(1) + gv.double().flatten(1).pow(2).sum(1)).sqrt()
            norms[layer] = torch.maximum(norms[layer], norm)
            denom = (norms[layer] + _SMALL).pow(gamma)
            # (N,) float64; exactly 0 on rows not updated and where the gradient has been 0 so far
            scale = torch.where(updated & (norms[layer] > 0), -step_size / denom, torch.zeros_like(denom))
            new.append((dk.detach() + _row_view(scale, gk).to(gk.dtype) * gk,
                        dv.detach() + _row_view(scale, gv).to(gv.dtype) * gv))
        deltas = new
    with torch.no_grad():
        final = step_fn([(k + dk, v + dv) for (k, v), (dk, dv) in zip(base, deltas)]).detach()
        mass = torch.where(updated, demo_log_mass(final, demo_index, demo_valid),
                           demo_log_mass(plain, demo_index, demo_valid)).exp()
    return KVUpdate(deltas, updated, mass, final, steps)


def geometric_mix(perturbed_log_probs: Tensor, plain_log_probs: Tensor, weight: float, updated: Tensor) -> Tensor:
    """(N, V) log-probs of the geometric mixture ``p_pert**weight * p_plain**(1 - weight)``,
    renormalised, on ``updated`` rows ((N,) bool); the other rows are ``plain_log_probs``
    bit-identical. ``weight`` in [0, 1]; inputs (N, V) log-probs, not modified."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must lie in [0, 1], got {weight!r}")
    if perturbed_log_probs.shape != plain_log_probs.shape or updated.shape != plain_log_probs.shape[:1]:
        raise ValueError(f"expected (N, V), (N, V), (N,), got {tuple(perturbed_log_probs.shape)}, "
                         f"{tuple(plain_log_probs.shape)}, {tuple(updated.shape)}")
    if not bool(updated.any()):
        return plain_log_probs.clone()
    if weight == 1.0:
        mixed = perturbed_log_probs.log_softmax(dim=-1)
    elif weight == 0.0:
        mixed = plain_log_probs.log_softmax(dim=-1)
    else:
        mixed = (weight * perturbed_log_probs + (1.0 - weight) * plain_log_probs).log_softmax(dim=-1)
    return torch.where(updated.unsqueeze(1), mixed, plain_log_probs)
