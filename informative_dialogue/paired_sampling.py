"""Sampling whose random draws belong to the example, not to the batch: paired comparisons.

Two decoders compared "with the same seed" are only paired if every example sees the same
random numbers in both runs. A batched sampler that draws from one stream for the whole run
(fairseq's ``Sampling`` search, ``torch.multinomial`` over all live rows) breaks this: when one
example's output changes length, the rows of the batch shift and every later draw of every
other example changes too, so "share of outputs changed" counts examples the method never
touched.

Here the draw of example ``i`` at step ``t`` is a Gumbel-max draw (:func:`gumbel_max_sample`):
the token with the largest ``log p(token) + G(token)``, where the noise ``G`` of every token
comes from uniforms of a stream seeded by ``(seed, i, t)`` only (:func:`example_uniforms`). The
draw is an exact sample of the (possibly truncated, unnormalised) distribution, and it is the
coupling under which two nearby distributions most often give the same token: a token entering or
leaving a top-p nucleus, or a small change of the probabilities, moves the draw only where it
changes the winner (an inverse-CDF draw with one shared uniform moves whenever the cumulative
mass before the drawn token shifts by more than the distance to a boundary, which truncation of
a flat tail does for most draws). The fairseq search that uses it is
:class:`fairseq_plugins.generation.paired_sampling.ExampleSeededSampling`.

Only the standard library, numpy and torch are imported.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["example_uniforms", "gumbel_max_sample"]


def example_uniforms(seed: int, example_ids: Sequence[int], step: int, shape: Sequence[int]) -> Tensor:
    """Uniforms in [0, 1) that depend on ``(seed, example id, step)`` only.

    Args:
        seed: the run's seed (non-negative).
        example_ids: (R,) the example of each row (dataset index).
        step: the decoding step (non-negative).
        shape: the uniforms of one row, e.g. (draws, vocab).

    Returns:
        (R, *shape) float32 tensor on the CPU; row r is the first numbers of the stream of
        ``(seed, example_ids[r], step)`` (numpy's SeedSequence mixes the three), in C order.
    """
    shape = tuple(int(n) for n in shape)
    if seed < 0 or step < 0 or any(n < 1 for n in shape):
        raise ValueError(f"example_uniforms: seed {seed} and step {step} must be >= 0 and shape {shape} positive")
    out = np.empty((len(example_ids),) + shape, dtype=np.float32)
    for row, example in enumerate(example_ids):
        if example < 0:
            raise ValueError(f"example_uniforms: example id {example} is negative")
        out[row] = np.random.default_rng([int(seed), int(example), int(step)]).random(shape, dtype=np.float32)
    return torch.from_numpy(out)


def gumbel_max_sample(probs: Tensor, uniforms: Tensor) -> Tensor:
    """Draw token indices from unnormalised distributions by Gumbel-max.

    Args:
        probs: (R, V) non-negative masses (rows need not sum to 1; zeros are never drawn);
            every row must have positive mass.
        uniforms: (R, D, V) numbers in [0, 1): D draws per row, one number per token.

    Returns:
        (R, D) int64 indices on ``probs``' device: ``argmax_v log probs[r, v] - log(-log u[r, d, v])``,
        computed in float32 as the exponential race ``argmax_v probs[r, v] / (-log u[r, d, v])``.
    """
    if probs.dim() != 2 or uniforms.dim() != 3 or uniforms.shape[0] != probs.shape[0] \
            or uniforms.shape[2] != probs.shape[1]:
        raise ValueError(f"gumbel_max_sample: probs {tuple(probs.shape)} and uniforms {tuple(uniforms.shape)} "
                         "must be (R, V) and (R, D, V)")
    if not bool((probs.sum(dim=1) > 0).all()):
        raise ValueError("gumbel_max_sample: a row has no probability mass")
    # argmax log p - log(-log u) == argmax p / E with E = -log u ~ Exp(1): the exponential race
    race = -torch.log(uniforms.to(device=probs.device, dtype=torch.float32))     # (R, D, V), E >= 0
    return (probs.float().unsqueeze(1) / race).argmax(dim=2)                    # (R, D)
