"""Corpus n-gram statistics of generated responses: Distinct-n, KL-n, LF and average length.

Every function takes already tokenised responses (lists of tokens, see
:func:`dialogue_metrics.text.tokenize`); n-grams never cross response boundaries.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

Tokens = Sequence[str]


def ngrams(tokens: Tokens, n: int) -> list[tuple[str, ...]]:
    """The contiguous n-grams of one response, in order (``[]`` if it has fewer than n tokens)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def ngram_counts(responses: Iterable[Tokens], n: int) -> Counter:
    """Counts of all n-grams over all ``responses`` (n-grams stay within a response)."""
    counts: Counter = Counter()
    for tokens in responses:
        counts.update(ngrams(tokens, n))
    return counts


def distinct_n(responses: Sequence[Tokens], n: int) -> float:
    """Distinct-n (Li et al., 2016), corpus level.

    Definition: (number of distinct n-grams over the whole output) / (total number of n-grams
    over the whole output), where the n-grams of each response are taken separately (none
    crosses a response boundary). Responses shorter than n contribute no n-gram; if the whole
    output has no n-gram (e.g. all responses empty) the value is 0.0.
    """
    counts = ngram_counts(responses, n)
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def kl_divergence(
    hypotheses: Sequence[Tokens],
    references: Sequence[Tokens],
    n: int,
    per_response: bool = True,
) -> float:
    """KL-n between the reference and the generated n-gram distributions, as in Csáky et al.
    (2019) / their ``dialog-eval`` code (``metrics/divergence_metrics.py``).

    Definition (base-2 logarithms, n = 1 unigrams, n = 2 bigrams):

    1. Count n-grams over all generated responses (``C_gen``) and over all references
       (``C_ref``), n-grams within each response only.
    2. Keep only the n-grams seen on BOTH sides, ``I = keys(C_gen) & keys(C_ref)``; there is no
       smoothing: n-grams seen on one side only are dropped. Renormalise each side over ``I``:
       ``P_ref(g) = C_ref(g) / sum_{h in I} C_ref(h)``, likewise ``P_gen``.
    3. ``per_response=True`` (dialog-eval's estimator, the default): for every reference
       response r, average ``log2(P_ref(g) / P_gen(g))`` over the n-gram tokens g of r that are
       in I; the result is the mean of these per-response averages over the references that
       have at least one n-gram in I (the others are skipped, as dialog-eval skips them).
       ``per_response=False``: the exact ``KL(P_ref || P_gen) = sum_{g in I} P_ref(g)
       log2(P_ref(g) / P_gen(g))``, i.e. the same log-ratios averaged over all reference n-gram
       tokens at once instead of per response.

    The direction is KL(reference || generated) ("how well the model's distribution
    approximates the ground-truth one"); lower is better. The per-response estimator is a
    mean of means and can be slightly negative. dialog-eval additionally maps words outside
    its training vocabulary to ``<unk>``; this implementation uses the tokens as they are.
    Returns NaN (with a warning) when the two sides share no n-gram.
    """
    gen_counts = ngram_counts(hypotheses, n)
    ref_counts = ngram_counts(references, n)
    common = gen_counts.keys() & ref_counts.keys()
    if not common:
        logger.warning("KL-%d undefined: generated and reference responses share no %d-gram", n, n)
        return float("nan")
    gen_total = sum(gen_counts[g] for g in common)
    ref_total = sum(ref_counts[g] for g in common)

    def log_ratio(g: tuple[str, ...]) -> float:
        return math.log2((ref_counts[g] / ref_total) / (gen_counts[g] / gen_total))

    if not per_response:
        return sum(ref_counts[g] / ref_total * log_ratio(g) for g in common)
    per_ref = []
    for tokens in references:
        terms = [log_ratio(g) for g in ngrams(tokens, n) if g in common]
        if terms:
            per_ref.append(sum(terms) / len(terms))
    return sum(per_ref) / len(per_ref)


def token_counts(lines: Iterable[Tokens]) -> Counter:
    """Token frequencies over ``lines`` (e.g. the tokenised training responses for LF)."""
    counts: Counter = Counter()
    for tokens in lines:
        counts.update(tokens)
    return counts


def low_frequency_ratio(
    responses: Sequence[Tokens], train_counts: Mapping[str, int], threshold: int = 100
) -> float:
    """LF: the share of generated tokens that are low-frequency in the training data.

    Definition: (number of generated token occurrences t with ``train_counts[t] < threshold``)
    / (total number of generated token occurrences). Tokens never seen in training have count
    0 and so are low-frequency. ``train_counts`` are frequencies over the training responses
    (see :func:`token_counts`; the CLI uses the target side by default). Returns 0.0 if the
    output has no token at all. Range 0-1; higher means more rare words.
    """
    total = 0
    low = 0
    for tokens in responses:
        total += len(tokens)
        low += sum(1 for t in tokens if train_counts.get(t, 0) < threshold)
    return low / total if total else 0.0


def average_length(responses: Sequence[Tokens]) -> float:
    """Mean number of tokens per response (empty responses count as 0); 0.0 for no responses."""
    return sum(len(t) for t in responses) / len(responses) if responses else 0.0
