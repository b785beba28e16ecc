"""Token-level unlikelihood against over-used vocabulary: the "UL" baseline of the negative
distillation paper (§3.3: "it calculates the frequency of all generated words ... and penalizes
the high-frequency words"), i.e. the vocabulary-usage unlikelihood of Li et al. (2020, "Don't
say that!"), built on Welleck et al.'s (2020) token unlikelihood (ND paper Eq. 2).

Candidates (following Li et al. and their released ParlAI agent): the tokens the model itself
generates (free-running, greedy here) whose share among the generations of the last N batches
exceeds their share among the human targets of the same batches. Each occurrence of such a token
in a generation is penalised with weight beta(c):

- ``kldiv`` (Li et al.'s choice): ``beta(c) = p_model(c) log(p_model(c) / p_human(c))``, for
  tokens with ``p_model > p_human > 0``, kept when beta > threshold;
- ``uniform``: 1 where ``p_model - p_human >= threshold``;
- ``logdiff``: ``log((p_model - p_human) / 0.001)`` where ``p_model - p_human >= threshold``.

A token never seen in the human targets of the window (p_human = 0) is not a candidate under
``kldiv`` (its weight would be infinite), as in the reference agent. Context-repetition
unlikelihood (Li et al.'s other candidate set: tokens copied from the context) is not what the ND
paper compares with and is not implemented.

The NT baseline (He & Glass, 2020, negative training against frequent responses) shares this
module: :class:`ResponseWindow` and :func:`sequence_log_likelihood`.

Shapes: B = batch, T = length, V = vocabulary.
"""
from __future__ import annotations

import math
from collections import Counter, deque
from typing import Collection, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from informative_dialogue.nd.soft_unlikelihood import log1mexp

WEIGHTINGS = ("kldiv", "uniform", "logdiff")


def token_unlikelihood(logits: Tensor, tokens: Tensor, weights: Tensor, eps: float = 1e-6) -> Tensor:
    """``-sum_t w_t log(1 - p(tokens_t))`` (Welleck et al., 2020; ND paper Eq. 2).

    Args:
        logits: ``(B, T, V)`` scores of the model for each position.
        tokens: ``(B, T)`` long, the candidate (negative) token at each position.
        weights: ``(B, T)`` float, the penalty weight per position (0 = not penalised).
        eps: floor of ``1 - p`` (see soft_unlikelihood.log1mexp).

    Returns:
        A scalar, summed over positions.
    """
    log_p = F.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return -(log1mexp(log_p, eps) * weights.to(log_p.dtype)).sum()


def penalty_weights(model_counts: Tensor, human_counts: Tensor, weighting: str = "kldiv",
                    threshold: float = 1e-3) -> Tensor:
    """Per-vocabulary-entry penalty weights ``(V,)`` from token counts ``(V,)`` of the model's
    generations and of the human targets over the same window (0 = not a candidate)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    model_total, human_total = model_counts.sum(), human_counts.sum()
    weights = torch.zeros(model_counts.shape, dtype=torch.float64)
    if model_total <= 0 or human_total <= 0:
        return weights
    p_model = model_counts.double() / model_total
    p_human = human_counts.double() / human_total
    if weighting == "kldiv":
        cand = (p_model > p_human) & (p_human > 0)
        beta = torch.zeros_like(p_model)
        beta[cand] = p_model[cand] * (p_model[cand].log() - p_human[cand].log())
        keep = cand & (beta > threshold)
        weights[keep] = beta[keep]
    else:
        diff = p_model - p_human
        keep = (model_counts > 0) & (diff >= threshold)
        weights[keep] = 1.0 if weighting == "uniform" else torch.log(diff[keep] / 0.001)
    return weights


class RunningCounts:
    """Token counts ``(V,)`` summed over the last ``size`` batches (a sliding window)."""

    def __init__(self, vocab_size: int, size: int):
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self.size = size
        self.window: deque = deque()
        self.total = torch.zeros(vocab_size, dtype=torch.long)

    def add(self, tokens: Tensor, ignore: Union[int, Collection[int], None] = None) -> None:
        """Count the tokens of one batch (any shape), skipping the id or ids ``ignore``
        (padding; the end-of-sentence symbol where it is no vocabulary usage)."""
        flat = tokens.reshape(-1).cpu()
        for idx in ([ignore] if isinstance(ignore, int) else ignore or ()):
            flat = flat[flat != idx]
        counts = torch.bincount(flat, minlength=self.total.numel())
        self.window.append(counts)
        self.total += counts
        if len(self.window) > self.size:
            self.total -= self.window.popleft()

    @property
    def full(self) -> bool:
        return len(self.window) >= self.size

    def reset(self) -> None:
        self.window.clear()
        self.total.zero_()


def kl_divergence(p_counts: Tensor, q_counts: Tensor) -> float:
    """KL(p || q) in nats between two count vectors, over p's support (q floored at 1e-20);
    logged to watch the model's token distribution approach the human one."""
    p = p_counts.double() / max(int(p_counts.sum()), 1)
    q = q_counts.double() / max(int(q_counts.sum()), 1)
    m = p > 0
    return float((p[m] * (p[m].log() - q[m].clamp(min=1e-20).log())).sum()) if m.any() else math.nan


# --- negative training on frequent responses (He & Glass, 2020): the paper's NT baseline -------

class ResponseWindow:
    """Counts of whole generated responses (token tuples) over the last ``size`` batches, for the
    frequent-response negative training of He & Glass (2020): a response is *frequent* when its
    share of the responses in the window exceeds a ratio (r_thres; the ND paper uses 1%)."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self.size = size
        self.window: deque = deque()
        self.counts: Counter = Counter()
        self.responses = 0

    def add(self, responses: list) -> None:
        batch = Counter(tuple(r) for r in responses)
        self.window.append(batch)
        self.counts.update(batch)
        self.responses += len(responses)
        if len(self.window) > self.size:
            old = self.window.popleft()
            self.counts.subtract(old)
            self.responses -= sum(old.values())
            self.counts = +self.counts  # drop zero counts

    def frequent(self, responses: list, ratio: float) -> list:
        """For each response: is its share in the window > ``ratio``?"""
        if self.responses == 0:
            return [False] * len(responses)
        return [self.counts[tuple(r)] / self.responses > ratio for r in responses]


def sequence_log_likelihood(logits: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
    """``sum_t log p(tokens_t)`` over positions where ``mask`` ``(B, T)`` is True, per row ``(B,)``."""
    log_p = F.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return (log_p * mask.to(log_p.dtype)).sum(dim=-1)
