"""Compute a chosen set of metrics for one system's responses (library entry point)."""
from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from . import entities, ngrams, overlap, safe
from .registry import BY_KEY, METRICS
from .text import tokenize_all

logger = logging.getLogger(__name__)


@dataclass
class EvalInputs:
    """Everything the metrics may need. Only ``hypotheses`` is required; a metric whose input
    is missing is skipped when metrics are chosen automatically, and is an error when asked
    for explicitly."""

    hypotheses: Sequence[str]
    references: Sequence[str] | None = None
    knowledge: Sequence[str] | None = None
    train_counts: Mapping[str, int] | None = None  # token frequencies for LF
    ppl: float | None = None
    entity_mode: str | None = None  # None, "spacy" or "vocab"
    entity_vocab: Collection[str] | None = None
    entity_labels: Collection[str] | None = None
    spacy_model: str = entities.DEFAULT_SPACY_MODEL
    lf_threshold: int = 100
    safe_phrases: Iterable[str] = field(default_factory=lambda: list(safe.DEFAULT_SAFE_PHRASES))
    tokenize: str = "space"
    rouge_tokenizer: str = "rouge_score"  # or "whitespace" (dialogue_metrics.overlap.rouge_l)


def _available(inputs: EvalInputs, need: str | None) -> bool:
    return {
        None: True,
        "ref": inputs.references is not None,
        "knowledge": inputs.knowledge is not None,
        "train": inputs.train_counts is not None,
        "ppl": inputs.ppl is not None,
        "entity": inputs.entity_mode is not None,
    }[need]


def choose_metrics(inputs: EvalInputs, requested: Sequence[str] | None) -> list[str]:
    """The metric keys to compute, in table order: ``requested`` (all must be computable from
    ``inputs``, else ``ValueError`` naming the missing input), or every computable metric."""
    if requested is None:
        return [m.key for m in METRICS if _available(inputs, m.needs)]
    missing = [k for k in requested if not _available(inputs, BY_KEY[k].needs)]
    if missing:
        hints = {
            "ref": "references (--ref or T- lines)",
            "knowledge": "--knowledge",
            "train": "--train-tgt",
            "ppl": "--ppl-log/--ppl",
            "entity": "--entities or --entity-vocab",
        }
        needs = sorted({hints[BY_KEY[k].needs] for k in missing})
        raise ValueError(f"metrics {', '.join(missing)} need {' and '.join(needs)}")
    order = {m.key: i for i, m in enumerate(METRICS)}
    return sorted(dict.fromkeys(requested), key=order.__getitem__)


def evaluate(inputs: EvalInputs, requested: Sequence[str] | None = None) -> dict[str, float]:
    """Compute the metrics (see :func:`choose_metrics`); returns ``{key: value}`` in table
    order, with the unscaled values documented in :mod:`dialogue_metrics.registry`."""
    keys = choose_metrics(inputs, requested)
    hyps = list(inputs.hypotheses)
    refs = list(inputs.references) if inputs.references is not None else None
    if refs is not None and len(refs) != len(hyps):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if inputs.knowledge is not None and len(inputs.knowledge) != len(hyps):
        raise ValueError(f"{len(hyps)} hypotheses but {len(inputs.knowledge)} knowledge lines")
    hyp_tok = tokenize_all(hyps, inputs.tokenize)
    ref_tok = tokenize_all(refs, inputs.tokenize) if refs is not None else None

    results: dict[str, float] = {}
    for key in keys:
        logger.debug("computing %s", key)
        if key == "ppl":
            value = float(inputs.ppl)
        elif key.startswith("sbleu"):
            value = overlap.sentence_bleu_mean(hyp_tok, ref_tok, int(key[-1]))
        elif key.startswith("bleu"):
            value = overlap.corpus_bleu(hyp_tok, ref_tok, int(key[-1]))
        elif key == "rougeL":
            value = overlap.rouge_l(hyp_tok, ref_tok, inputs.rouge_tokenizer)
        elif key.startswith("dist"):
            value = ngrams.distinct_n(hyp_tok, int(key[-1]))
        elif key == "lf":
            value = ngrams.low_frequency_ratio(hyp_tok, inputs.train_counts, inputs.lf_threshold)
        elif key.startswith("kl"):
            value = ngrams.kl_divergence(hyp_tok, ref_tok, int(key[-1]))
        elif key == "safe":
            value = safe.safe_response_rate(hyps, inputs.safe_phrases)
        elif key == "kf1":
            value = overlap.mean_unigram_f1(hyps, inputs.knowledge)
        elif key == "f1":
            value = overlap.mean_unigram_f1(hyps, refs)
        elif key == "entity":
            if inputs.entity_mode == "vocab":
                value = entities.entity_score_vocab(hyp_tok, inputs.entity_vocab or ())
            else:
                nlp = entities.load_spacy_ner(inputs.spacy_model)
                value = entities.entity_score_spacy(hyps, nlp, inputs.entity_labels)
        elif key == "avg_len":
            value = ngrams.average_length(hyp_tok)
        else:  # pragma: no cover - registry and this dispatch are kept in sync by the tests
            raise KeyError(key)
        results[key] = value
    return results
