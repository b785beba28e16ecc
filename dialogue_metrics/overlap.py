"""Overlap metrics between a response and a reference (or grounding) text: BLEU, ROUGE-L, F1.

BLEU and ROUGE-L take tokenised responses (:func:`dialogue_metrics.text.tokenize`); the F1
metrics take raw strings and apply the ParlAI normalisation themselves.
"""
from __future__ import annotations

import re
import warnings
from collections import Counter
from typing import Sequence

Tokens = Sequence[str]

MAX_BLEU_ORDER = 4


def _check_pairs(hypotheses: Sequence, references: Sequence) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} references; they must pair up"
        )


def corpus_bleu(hypotheses: Sequence[Tokens], references: Sequence[Tokens], order: int) -> float:
    """Corpus-level cumulative BLEU-n (Papineni et al., 2002), on a 0-1 scale.

    Definition: ``BP * exp(sum_{k=1..n} (1/n) log p_k)`` where ``p_k`` is the modified k-gram
    precision with clipped counts summed over the whole corpus, and ``BP = min(1, exp(1 - R/H))``
    with R and H the total reference and hypothesis lengths (one reference per example). No
    smoothing: if some ``p_k`` is 0 the score is 0 (never the case on realistic test sets).
    Computed by sacrebleu (``BLEU(max_ngram_order=n, tokenize='none', smooth_method='none')``)
    on the already tokenised, lower-cased text, divided by 100. This is the "corpus-level
    BLEU" of the knowledge-internalization paper (``bleu1..bleu4``). Empty hypotheses add
    reference length only (so they lower BP).
    """
    from sacrebleu.metrics import BLEU

    _check_pairs(hypotheses, references)
    if not hypotheses:
        return 0.0
    bleu = BLEU(
        max_ngram_order=order, tokenize="none", smooth_method="none", effective_order=False,
        force=True,  # the input is tokenised on purpose; silences sacrebleu's detokenisation warning
    )
    hyp_str = [" ".join(t) for t in hypotheses]
    ref_str = [" ".join(t) for t in references]
    return bleu.corpus_score(hyp_str, [ref_str]).score / 100.0


def sentence_bleu_mean(
    hypotheses: Sequence[Tokens], references: Sequence[Tokens], order: int
) -> float:
    """Mean sentence-level BLEU-n with Chen & Cherry (2014) smoothing, on a 0-1 scale.

    Definition: for every example, NLTK ``sentence_bleu([ref], hyp, weights=(1/n,)*n,
    smoothing_function=SmoothingFunction().method7)``; the value is the plain average over all
    examples (``sbleu1..sbleu4``). ``method7`` is Chen & Cherry's smoothing 7 (smoothing 4,
    length-dependent pseudo-counts for zero n-gram matches, followed by smoothing 5, averaging
    each precision with its neighbours); it is the combination Chen & Cherry found best for
    sentence-level BLEU, and the negative-distillation paper cites Chen & Cherry (2014) for its
    BLEU. NLTK returns 0 for an empty hypothesis or a hypothesis with no matching unigram.
    Caveat of smoothing 5 (as specified in the paper, ``m_0 = p_1 + 1``): for very short,
    near-exact matches a sentence score can exceed 1.
    """
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    _check_pairs(hypotheses, references)
    if not hypotheses:
        return 0.0
    smoothing = SmoothingFunction().method7
    weights = tuple([1.0 / order] * order)
    total = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns for every hypothesis with zero matches
        for hyp, ref in zip(hypotheses, references):
            if not hyp or not ref:
                continue  # 0 by definition; NLTK agrees but warns
            total += sentence_bleu(
                [list(ref)], list(hyp), weights=weights, smoothing_function=smoothing
            )
    return total / len(hypotheses)


class _WhitespaceTokenizer:
    """rouge_score tokenizer that keeps the given tokens as they are (its default one drops
    every non-alphanumeric character)."""

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return text.split()


ROUGE_TOKENIZERS = ("rouge_score", "whitespace")


def rouge_l(hypotheses: Sequence[Tokens], references: Sequence[Tokens], tokenizer: str = "rouge_score") -> float:
    """Mean sentence-level ROUGE-L F-measure (Lin, 2004), on a 0-1 scale.

    Definition: for every example ``F = 2PR / (P + R)`` with ``P = LCS / len(hyp)`` and
    ``R = LCS / len(ref)`` (LCS = longest common token subsequence), computed by
    ``rouge_score.rouge_scorer.RougeScorer(['rougeL'])`` (no stemming); averaged over all
    examples. An empty hypothesis scores 0.

    ``tokenizer``: ``"rouge_score"`` (default) re-tokenises the tokens, joined by spaces, with
    rouge-score's own tokenizer (lower-case, every character other than ``a-z0-9`` a separator:
    punctuation and non-ASCII letters are dropped), the convention of published ROUGE scores;
    ``"whitespace"`` scores the given tokens as they are, punctuation included, the tokens of the
    other metrics (higher values: punctuation such as a final ``.`` or ``?`` matches easily).
    """
    scores = rouge_l_per_example(hypotheses, references, tokenizer)
    return sum(scores) / len(scores) if scores else 0.0


def rouge_l_per_example(
    hypotheses: Sequence[Tokens], references: Sequence[Tokens], tokenizer: str = "rouge_score"
) -> list[float]:
    """The sentence-level ROUGE-L F of every example (:func:`rouge_l` is their mean)."""
    from rouge_score.rouge_scorer import RougeScorer

    _check_pairs(hypotheses, references)
    if tokenizer not in ROUGE_TOKENIZERS:
        raise ValueError(f"unknown ROUGE tokenizer {tokenizer!r}; expected one of {ROUGE_TOKENIZERS}")
    scorer = RougeScorer(["rougeL"], tokenizer=_WhitespaceTokenizer() if tokenizer == "whitespace" else None)
    return [scorer.score(" ".join(ref), " ".join(hyp))["rougeL"].fmeasure
            for hyp, ref in zip(hypotheses, references)]


_RE_ARTICLES = re.compile(r"\b(a|an|the)\b")
_RE_PUNCT = re.compile(r"[!\"#$%&()*+,\-./:;<=>?@\[\]\\^`{|}~_']")


def parlai_normalize(text: str) -> str:
    """ParlAI's answer normalisation (``parlai.core.metrics.normalize_answer``): lower-case,
    replace ASCII punctuation (including ``'``) by spaces, remove the articles a/an/the,
    collapse whitespace."""
    text = text.lower()
    text = _RE_PUNCT.sub(" ", text)
    text = _RE_ARTICLES.sub(" ", text)
    return " ".join(text.split())


def unigram_f1(prediction: str, gold: str) -> float:
    """Unigram F1 of one prediction against one gold text (ParlAI ``F1Metric``).

    Both texts are :func:`parlai_normalize`-d and split on whitespace; with
    ``same = |multiset(pred) & multiset(gold)|``, ``P = same/len(pred)``,
    ``R = same/len(gold)``, ``F1 = 2PR/(P+R)``; 0 when nothing is shared (including when
    either side is empty after normalisation).
    """
    pred = parlai_normalize(prediction).split()
    gold_tokens = parlai_normalize(gold).split()
    same = sum((Counter(pred) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def mean_unigram_f1(predictions: Sequence[str], golds: Sequence[str]) -> float:
    """Average :func:`unigram_f1` over paired examples; 0-1 scale.

    With golds = reference responses this is ``f1`` (the KID paper's WoW F1); with golds = the
    grounding knowledge text of each example it is ``kf1`` (Wizard-of-Wikipedia "wikiF1",
    Dinan et al., 2018). Every example counts, an empty gold line scores 0.
    """
    _check_pairs(predictions, golds)
    if not predictions:
        return 0.0
    return sum(unigram_f1(p, g) for p, g in zip(predictions, golds)) / len(predictions)
