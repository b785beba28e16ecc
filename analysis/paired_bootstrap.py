"""``paired-bootstrap``: is system B better than system A on the same examples, or is it noise?

Per-example scores of two systems' outputs on the same test examples (``f1``: unigram F1 with
the reference, ``kf1``: unigram F1 with the grounding knowledge, ``rougeL``: sentence ROUGE-L
F with the reference, with rouge-score's own tokenizer unless ``--rouge-tokenizer whitespace``;
the definitions of ``dialog-metrics``), then the paired bootstrap
(Koehn, 2004): resample the examples with replacement ``--resamples`` times and report the mean
difference B - A, its 95% percentile interval, and the share of resamples in which B - A <= 0
(a one-sided p-value for "B > A"). Inputs are fairseq-generate outputs (examples matched by id;
the two must hold the same ids) or plain hypothesis files (one line per example).

A fairseq-generate output that lacks examples of the reference file (or holds ids beyond it)
is an error (exit status 2) unless ``--allow-partial``, as in ``dialog-metrics``; every result
carries ``n_examples`` (N, the examples compared) and ``n_expected``.
"""
from __future__ import annotations

import logging
import random
from argparse import ArgumentParser
from dataclasses import asdict, dataclass, replace
from typing import Optional, Sequence

from dialogue_metrics.overlap import ROUGE_TOKENIZERS, rouge_l_per_example, unigram_f1
from dialogue_metrics.readers import (
    InputError, align_by_ids, check_ids, check_same_count, drop_tokens, parse_gen_out, read_lines, read_text_lines,
)
from dialogue_metrics.text import tokenize_all, wordpiece_detok
from informative_dialogue.cli import console_script, setup_logging
from informative_dialogue.text_io import write_json_atomic

logger = logging.getLogger(__name__)

METRICS = ("f1", "kf1", "rougeL")


@dataclass(frozen=True)
class BootstrapResult:
    """B - A on one metric: the observed mean difference (0-1 scale), the 95% interval, the
    share of resamples with B - A <= 0, and the two systems' means."""

    metric: str
    n_examples: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_b_not_better: float
    resamples: int
    n_expected: int | None = None  # examples of the reference file (None: not known)
    rouge_tokenizer: str | None = None  # rougeL only: "rouge_score" or "whitespace"


def per_example_scores(
    metric: str, hypotheses: Sequence[str], golds: Sequence[str], rouge_tokenizer: str = "rouge_score"
) -> list[float]:
    """One score per example: ``f1``/``kf1`` = :func:`unigram_f1` against ``golds`` (references
    or knowledge), ``rougeL`` = ROUGE-L F (lower-cased; rouge-score's own tokenizer, or the
    whitespace tokens with ``rouge_tokenizer="whitespace"``, as ``dialog-metrics``)."""
    check_same_count(hypotheses, "hypotheses", golds, "gold texts")
    if metric in ("f1", "kf1"):
        return [unigram_f1(h, g) for h, g in zip(hypotheses, golds)]
    if metric == "rougeL":
        return rouge_l_per_example(tokenize_all(hypotheses), tokenize_all(golds), rouge_tokenizer)
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def paired_bootstrap(scores_a: Sequence[float], scores_b: Sequence[float], resamples: int = 2000,
                     seed: int = 0, metric: str = "") -> BootstrapResult:
    """The paired bootstrap of the per-example differences ``b - a`` (same examples, same order)."""
    check_same_count(scores_a, "system A scores", scores_b, "system B scores")
    if not scores_a:
        raise InputError("no examples to compare")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    n = len(scores_a)
    diffs = [b - a for a, b in zip(scores_a, scores_b)]
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    low = means[int(0.025 * resamples)]
    high = means[min(resamples - 1, int(0.975 * resamples))]
    return BootstrapResult(
        metric=metric, n_examples=n, mean_a=sum(scores_a) / n, mean_b=sum(scores_b) / n,
        diff=sum(diffs) / n, ci_low=low, ci_high=high,
        p_b_not_better=sum(m <= 0 for m in means) / resamples, resamples=resamples)


def _read_system(path: str, detok: bool) -> tuple[list[int] | None, list[str], int | None]:
    """(example ids or None for a plain file, hypotheses, fairseq's 'Translated N' or None)."""
    lines = read_lines(path)
    translated = None
    if any(line.startswith(("H-", "D-")) for line in lines[:1000]):
        gen = parse_gen_out(lines, path)
        hyps = gen.hypotheses
        ids: list[int] | None = gen.ids
        translated = gen.translated
    else:
        hyps, ids = lines, None
    return ids, [wordpiece_detok(h) for h in hyps] if detok else hyps, translated


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="paired-bootstrap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="system A: fairseq-generate output or hypotheses file")
    parser.add_argument("--b", required=True, help="system B: fairseq-generate output or hypotheses file")
    parser.add_argument("--ref", help="references, one per example (f1, rougeL)")
    parser.add_argument("--knowledge", help="grounding knowledge, one line per example (kf1)")
    parser.add_argument("--metrics", default="f1,rougeL", help=f"comma-separated, of {','.join(METRICS)}")
    parser.add_argument("--wordpiece-detok", action="store_true", help="join ## word pieces of every input first")
    parser.add_argument("--knowledge-drop-token", "--drop-token", dest="knowledge_drop_token", action="append",
                        default=[], metavar="TOKEN",
                        help="a token removed from the knowledge lines (e.g. a sentence separator), as in "
                        "dialog-metrics; repeatable")
    parser.add_argument("--rouge-tokenizer", choices=ROUGE_TOKENIZERS, default="rouge_score",
                        help="rougeL tokenisation, as dialog-metrics: rouge_score (default, the package's own "
                        "tokenizer) or whitespace (punctuation kept)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="compare fairseq-generate outputs that lack some examples of the reference file "
                        "(default: an error); only the examples with a reference are compared")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", help="write the results as a JSON list")
    return parser


def main(argv: Optional[list[str]] = None) -> list[dict]:
    """``paired-bootstrap``; returns one result dict per metric and logs a line per metric.
    Unusable input raises :class:`InputError` (the console script: one line, exit status 2)."""
    args = build_parser().parse_args(argv)
    setup_logging()
    metrics = [m for m in args.metrics.split(",") if m]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {unknown}; expected {METRICS}")
    ids_a, hyps_a, translated = _read_system(args.a, args.wordpiece_detok)
    ids_b, hyps_b, _ = _read_system(args.b, args.wordpiece_detok)
    if ids_a != ids_b:
        raise InputError(f"{args.a} and {args.b} do not hold the same examples "
                         f"({len(hyps_a)} and {len(hyps_b)})")
    check_same_count(hyps_a, args.a, hyps_b, args.b)
    results = []
    for metric in metrics:
        gold_path = args.knowledge if metric == "kf1" else args.ref
        if not gold_path:
            raise InputError(f"metric {metric} needs {'--knowledge' if metric == 'kf1' else '--ref'}")
        golds = read_text_lines(gold_path, args.wordpiece_detok)
        if metric == "kf1":
            golds = drop_tokens(golds, args.knowledge_drop_token)
        n_expected = len(golds)
        a, b = hyps_a, hyps_b
        if ids_a is not None:  # fairseq outputs: every example of the gold file, unless --allow-partial
            check = check_ids(ids_a, args.a, len(golds), gold_path, translated, args.allow_partial)
            keep = [k for k, i in enumerate(ids_a) if i < check.expected]
            a, b = [hyps_a[k] for k in keep], [hyps_b[k] for k in keep]
            golds = align_by_ids(golds, check.kept, gold_path, args.a)
        check_same_count(a, args.a, golds, gold_path)
        tokenizer = args.rouge_tokenizer if metric == "rougeL" else None
        result = paired_bootstrap(per_example_scores(metric, a, golds, args.rouge_tokenizer),
                                  per_example_scores(metric, b, golds, args.rouge_tokenizer), args.resamples,
                                  args.seed, metric)
        result = replace(result, n_expected=n_expected, rouge_tokenizer=tokenizer)
        logger.info("%s: A %.2f, B %.2f, B - A %+.2f (95%% CI %+.2f .. %+.2f), P(B - A <= 0) = %.3f, n = %d of %d",
                    metric, 100 * result.mean_a, 100 * result.mean_b, 100 * result.diff, 100 * result.ci_low,
                    100 * result.ci_high, result.p_b_not_better, result.n_examples, n_expected)
        results.append(asdict(result))
    if args.json_out:
        write_json_atomic(args.json_out, results, sort_keys=False)
    return results


cli = console_script(main)  # the console script: exit status 0 on success, 2 on input errors
