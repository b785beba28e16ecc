"""The catalogue of metrics: keys, table headers and formatting, one-line definitions, inputs.

The order of :data:`METRICS` is the column order of the markdown table.
"""
from __future__ import annotations

from dataclasses import dataclass

from .overlap import ROUGE_TOKENIZERS


@dataclass(frozen=True)
class MetricInfo:
    """How one metric is named, shown and defined."""

    key: str  # JSON key
    header: str  # markdown column header
    scale: float  # markdown value = JSON value * scale
    decimals: int
    needs: str | None  # input it needs besides the hypotheses: ref/train/knowledge/ppl/entity
    definition: str


def _bleu(n: int) -> MetricInfo:
    return MetricInfo(
        f"bleu{n}", f"BLEU-{n} (%)", 100.0, 2, "ref",
        f"corpus-level cumulative BLEU-{n} (uniform 1/{n} weights, brevity penalty, no "
        "smoothing; sacrebleu on the whitespace tokens), 0-1",
    )


def _sbleu(n: int) -> MetricInfo:
    return MetricInfo(
        f"sbleu{n}", f"sBLEU-{n} (%)", 100.0, 2, "ref",
        f"mean sentence-level BLEU-{n} with Chen & Cherry (2014) smoothing 7 (NLTK method7), 0-1",
    )


def _dist(n: int) -> MetricInfo:
    return MetricInfo(
        f"dist{n}", f"Dist-{n} (%)", 100.0, 2, None,
        f"distinct {n}-grams / all {n}-grams over the whole output (no n-gram crosses a "
        "response), 0-1",
    )


def _kl(n: int) -> MetricInfo:
    gram = "unigram" if n == 1 else "bigram"
    return MetricInfo(
        f"kl{n}", f"KL-{n}", 1.0, 3, "ref",
        f"{gram} KL(reference || generated) in bits as in Csaky et al. (2019) dialog-eval: "
        f"distributions restricted to the shared {gram}s, per-reference mean log-ratio, "
        "averaged over references; lower is better",
    )


METRICS: tuple[MetricInfo, ...] = (
    MetricInfo(
        "ppl", "PPL", 1.0, 2, "ppl",
        "last validation perplexity (2**nll_loss) of the fairseq log, or the value given",
    ),
    *(_bleu(n) for n in range(1, 5)),
    *(_sbleu(n) for n in range(1, 5)),
    MetricInfo(
        "rougeL", "ROUGE-L (%)", 100.0, 2, "ref",
        "mean sentence-level ROUGE-L F-measure (rouge_score's own tokenizer: lower-cased, every "
        "character other than a-z and 0-9 a separator, so punctuation is dropped; no stemming), 0-1",
    ),
    *(_dist(n) for n in range(1, 4)),
    MetricInfo(
        "lf", "LF (%)", 100.0, 2, "train",
        "share of generated tokens whose training-set frequency is below the LF threshold "
        "(unseen tokens included), 0-1",
    ),
    *(_kl(n) for n in range(1, 3)),
    MetricInfo(
        "safe", "%safe", 1.0, 2, None,
        "percentage (0-100) of responses containing a safe phrase (default \"i'm not sure\", "
        "\"i don't know\"), tokenisation- and apostrophe-insensitive, whole words",
    ),
    MetricInfo(
        "kf1", "kF1 (%)", 100.0, 2, "knowledge",
        "mean unigram F1 between response and grounding knowledge (ParlAI normalisation), 0-1",
    ),
    MetricInfo(
        "f1", "F1 (%)", 100.0, 2, "ref",
        "mean unigram F1 between response and reference (ParlAI normalisation), 0-1",
    ),
    MetricInfo(
        "entity", "Ent.", 1.0, 2, "entity",
        "mean number of entities per response (spaCy NER entities, or tokens in the entity "
        "vocabulary)",
    ),
    MetricInfo("avg_len", "AvgLen", 1.0, 2, None, "mean number of whitespace tokens per response"),
)

BY_KEY: dict[str, MetricInfo] = {m.key: m for m in METRICS}

# ROUGE-L tokenisations (dialogue_metrics.overlap.rouge_l): "rouge_score" (default) is the
# rouge-score package's own tokenizer, the convention of published ROUGE scores; "whitespace"
# scores the whitespace tokens of the other metrics, punctuation included (higher values; the
# convention of this project's results before the default changed).
DEFAULT_ROUGE_TOKENIZER = "rouge_score"
ROUGE_WHITESPACE_DEFINITION = (
    "mean sentence-level ROUGE-L F-measure (rouge_score's LCS on the whitespace tokens of the "
    "other metrics, punctuation kept, no stemming: --rouge-tokenizer whitespace, NOT rouge-score's "
    "own tokenisation), 0-1"
)


def definition(key: str, rouge_tokenizer: str = DEFAULT_ROUGE_TOKENIZER) -> str:
    """The one-line definition of metric ``key`` as computed (``rougeL`` depends on
    ``rouge_tokenizer``, one of :data:`ROUGE_TOKENIZERS`)."""
    if key == "rougeL":
        if rouge_tokenizer not in ROUGE_TOKENIZERS:
            raise ValueError(f"unknown ROUGE tokenizer {rouge_tokenizer!r}; expected one of {ROUGE_TOKENIZERS}")
        if rouge_tokenizer == "whitespace":
            return ROUGE_WHITESPACE_DEFINITION
    return BY_KEY[key].definition
BY_HEADER: dict[str, MetricInfo] = {m.header: m for m in METRICS}

GROUPS: dict[str, tuple[str, ...]] = {
    "bleu": tuple(f"bleu{n}" for n in range(1, 5)),
    "sbleu": tuple(f"sbleu{n}" for n in range(1, 5)),
    "rouge": ("rougeL",),
    "dist": tuple(f"dist{n}" for n in range(1, 4)),
    "kl": ("kl1", "kl2"),
}

FOOTNOTE = (
    "BLEU-n: corpus-level cumulative BLEU (Papineni et al., 2002; sacrebleu, no smoothing). "
    "sBLEU-n: mean sentence-level BLEU with Chen & Cherry (2014) smoothing 7 (NLTK method7). "
    "Columns marked (%) are proportions x100; %safe is a percentage; KL-n is in bits. "
    "Texts lower-cased and whitespace-tokenised; ROUGE-L with rouge-score's own tokenizer unless "
    "the JSON settings say rouge_tokenizer = whitespace. N: examples scored."
)


def resolve(spec: str | None) -> list[str] | None:
    """Metric keys (in table order) from a comma-separated list of keys and group names
    (``bleu``, ``sbleu``, ``rouge``, ``dist``, ``kl``); ``None``/empty means "all that the
    inputs allow". Raises ``ValueError`` on an unknown name."""
    if not spec or not spec.strip():
        return None
    wanted: set[str] = set()
    for name in (s.strip() for s in spec.split(",")):
        if not name:
            continue
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in BY_KEY:
            wanted.add(name)
        else:
            known = ", ".join([*GROUPS, *BY_KEY])
            raise ValueError(f"unknown metric {name!r}; known: {known}")
    return [m.key for m in METRICS if m.key in wanted]
