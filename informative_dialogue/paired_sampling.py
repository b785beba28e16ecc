"""Sampling whose random draws belong to the example, not to the batch: paired comparisons.

Two decoders compared "with the same seed" are only paired if every example sees the same
random numbers in both runs. A batched sampler that draws from one stream for the whole run
(fairseq's ``Sampling`` search, ``torch.multinomial`` over all live rows) breaks this: when one
example's output changes length, the rows of the batch shift and every later draw of every
other example changes too, so "share of outputs changed" counts examples the method never
touched.

Here the draws of example ``i`` at step ``t`` are ``D`` uniforms of a stream seeded by
``(seed, i, t)`` only (:func:`example_uniforms`), and a token is drawn from a (possibly
truncated, unnormalised) distribution by inverse-CDF (:func:`inverse_cdf_sample`): the first
token whose cumulative mass exceeds ``u`` times the total. The draw is an exact sample of the
distribution, and two runs whose distributions for an example agree at every step give that
example the same tokens whatever else is in the batch. (Inverse-CDF with shared uniforms is
also the coupling under which slightly different distributions most often give the same
token.) The fairseq search that uses it is
:class:`fairseq_plugins.generation.paired_sampling.ExampleSeededSampling`.

Only the standard library, numpy and torch are imported.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["example_uniforms", "inverse_cdf_sample"]


def example_uniforms(seed: int, example_ids: Sequence[int], step: int, draws: int) -> Tensor:
    """Uniforms in [0, 1) that depend on ``(seed, example id, step)`` only.

    Args:
        seed: the run's seed (non-negative).
        example_ids: (R,) the example of each row (dataset index).
        step: the decoding step (non-negative).
        draws: uniforms per row.

    Returns:
        (R, draws) float64 tensor on the CPU; row r is the first ``draws`` numbers of the
        stream of ``(seed, example_ids[r], step)`` (numpy's SeedSequence mixes the three).
    """
    if seed < 0 or step < 0 or draws < 1:
        raise ValueError(f"example_uniforms: seed {seed} and step {step} must be >= 0 and draws {draws} >= 1")
    out = np.empty((len(example_ids), draws), dtype=np.float64)
    for row, example in enumerate(example_ids):
        if example < 0:
            raise ValueError(f"example_uniforms: example id {example} is negative")
        out[row] = np.random.default_rng([int(seed), int(example), int(step)]).random(draws)
    return torch.from_numpy(out)


def inverse_cdf_sample(probs: Tensor, uniforms: Tensor) -> Tensor:
    """Draw token indices from unnormalised distributions by inverse-CDF.

    Args:
        probs: (R, V) non-negative masses (rows need not sum to 1; zeros are never drawn);
            every row must have positive mass.
        uniforms: (R, D) numbers in [0, 1), D draws per row.

    Returns:
        (R, D) int64 indices on ``probs``' device: the first index whose cumulative mass
        exceeds ``u x`` the row's total mass.
    """
    if probs.dim() != 2 or uniforms.dim() != 2 or probs.size(0) != uniforms.size(0):
        raise ValueError(f"inverse_cdf_sample: probs {tuple(probs.shape)} and uniforms {tuple(uniforms.shape)} "
                         "must be (R, V) and (R, D)")
    cumulative = probs.double().cumsum(dim=1)                                  # (R, V)
    total = cumulative[:, -1:]
    if not bool((total > 0).all()):
        raise ValueError("inverse_cdf_sample: a row has no probability mass")
    targets = uniforms.to(device=probs.device, dtype=torch.float64) * total    # (R, D)
    index = torch.searchsorted(cumulative, targets, right=True)                # (R, D)
    # rounding can put the target at the total: take the last token with mass instead
    positive = probs > 0
    last_positive = probs.size(1) - 1 - positive.flip(dims=[1]).to(torch.int64).argmax(dim=1, keepdim=True)
    return torch.minimum(index, last_positive)
