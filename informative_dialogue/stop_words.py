"""The English stop-word list shared by data preparation, and the KI stopword rule.

spaCy's ``STOP_WORDS`` (326 lower-cased words) is imported on first use only: importing spaCy
takes seconds, and most commands that import this module never need it.
"""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def english_stop_words() -> frozenset[str]:
    """spaCy's English stop words, lower-cased."""
    from spacy.lang.en.stop_words import STOP_WORDS

    return frozenset(w.lower() for w in STOP_WORDS)


def is_stopword(word: str, stop_words: frozenset[str] | set[str]) -> bool:
    """The knowledge-internalization stopword rule (retriever training and mining): ``word``
    lower-cased is in ``stop_words``, or it has no letter or digit (punctuation)."""
    return word.lower() in stop_words or not any(ch.isalnum() for ch in word)
