"""Automatic metrics for dialogue responses (no fairseq/torch dependency).

Library use::

    from dialogue_metrics import EvalInputs, evaluate
    results = evaluate(EvalInputs(hypotheses=hyps, references=refs))

Command line: ``dialog-metrics --help``. Every metric is defined precisely in the docstring
of its function and, in one line, in :mod:`dialogue_metrics.registry`.
"""
from .evaluate import EvalInputs, choose_metrics, evaluate
from .ngrams import average_length, distinct_n, kl_divergence, low_frequency_ratio, token_counts
from .overlap import corpus_bleu, mean_unigram_f1, rouge_l, sentence_bleu_mean, unigram_f1
from .readers import GenOutput, InputError, read_gen_out, read_lines
from .safe import DEFAULT_SAFE_PHRASES, safe_response_rate

__all__ = [
    "DEFAULT_SAFE_PHRASES",
    "EvalInputs",
    "GenOutput",
    "InputError",
    "average_length",
    "choose_metrics",
    "corpus_bleu",
    "distinct_n",
    "evaluate",
    "kl_divergence",
    "low_frequency_ratio",
    "mean_unigram_f1",
    "read_gen_out",
    "read_lines",
    "rouge_l",
    "safe_response_rate",
    "sentence_bleu_mean",
    "token_counts",
    "unigram_f1",
]
