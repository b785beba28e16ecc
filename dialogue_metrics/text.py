"""Text normalisation shared by all metrics: lower-casing, tokenisation, WordPiece joining.

All text-based metrics in this package see a response as the list of tokens returned by
:func:`tokenize` (lower-cased, then split on whitespace, optionally after sacrebleu's 13a
tokeniser). The exceptions are documented where they occur: F1/kF1 use the ParlAI
normalisation (:mod:`dialogue_metrics.overlap`), %safe its own apostrophe-aware normalisation
(:mod:`dialogue_metrics.safe`).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

TOKENIZERS = ("space", "13a")

_WORDPIECE_CONT = re.compile(r"\s+##(?=\S)")


def wordpiece_detok(text: str) -> str:
    """Join WordPiece continuation pieces onto the previous token.

    ``"ja ##le ##pen ##os are hot"`` -> ``"jalepenos are hot"``. A ``##`` piece at the very
    start of the line (no previous token) just loses its ``##``.
    """
    text = _WORDPIECE_CONT.sub("", text)
    if text.startswith("##") and len(text) > 2 and not text[2].isspace():
        text = text[2:]
    return text


@lru_cache(maxsize=2)
def _tokenizer_13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def tokenize(text: str, scheme: str = "space") -> list[str]:
    """Lower-case ``text`` and split it into tokens.

    ``scheme="space"`` (default) splits on whitespace only, so already-tokenised pipeline
    output is used as is; ``scheme="13a"`` first applies sacrebleu's ``13a`` tokeniser
    (the WMT ``mteval-v13a`` punctuation splitting). An empty or blank line gives ``[]``.
    """
    if scheme not in TOKENIZERS:
        raise ValueError(f"unknown tokenize scheme {scheme!r}; expected one of {TOKENIZERS}")
    text = text.lower()
    if scheme == "13a":
        text = _tokenizer_13a()(text)
    return text.split()


def tokenize_all(texts: Iterable[str], scheme: str = "space") -> list[list[str]]:
    """:func:`tokenize` every text of ``texts``, keeping empty ones as ``[]``."""
    return [tokenize(t, scheme) for t in texts]
