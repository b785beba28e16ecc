"""Word-level matching for token-level knowledge mining (``ki-mine``, KI paper §4.3): which
words are markup (:data:`DEFAULT_SKIP_TOKENS`), the stopword set (:func:`default_stopwords`:
spaCy's English ``STOP_WORDS`` plus BERT contraction remnants), and exact title matching (a
``phrase -> id`` matcher built from a knowledge base's title index, :func:`build_title_matcher`,
with BERT-style normalisation, :func:`normalize_phrase`; greedy longest-first n-gram matching
of a line's words, :func:`exact_match_ids`).

The rules these implement are documented in :mod:`data_prep.ki.mine`, which re-exports these
names.
"""
from __future__ import annotations

import unicodedata
from typing import Mapping, Sequence

import numpy as np

from informative_dialogue.stop_words import english_stop_words

DEFAULT_SKIP_TOKENS = ("__eou__", "[SEP]", "[CLS]", "[PAD]", "[MASK]", "[UNK]", "<s>", "</s>", "<pad>", "<unk>")
CONTRACTION_REMNANTS = frozenset({"s", "t", "m", "d", "ll", "re", "ve"})


def normalize_phrase(text: str) -> str:
    """Lower-case, strip accents, split punctuation off words, single spaces (what BERT's
    uncased basic tokenizer does before WordPiece): ``"L. Frank Baum"`` → ``"l . frank baum"``."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
    text = "".join(f" {ch} " if (unicodedata.category(ch).startswith("P") or ch in "$+<=>^`|~") else ch for ch in text)
    return " ".join(text.split())


def build_title_matcher(title_index: Mapping[str, int], max_title_words: int) -> dict[str, int]:
    """``phrase -> id`` for exact matching: every key of ``title_index`` (lower-cased, single
    spaces) of at most ``max_title_words`` words, then each key's :func:`normalize_phrase`
    variant where that is new (smallest id wins among variants)."""
    matcher: dict[str, int] = {}
    for key, item_id in title_index.items():
        key = " ".join(key.lower().split())
        if key and len(key.split(" ")) <= max_title_words:
            matcher.setdefault(key, int(item_id))
    for key, item_id in sorted(title_index.items(), key=lambda kv: kv[1]):
        norm = normalize_phrase(key)
        if norm and len(norm.split(" ")) <= max_title_words:
            matcher.setdefault(norm, int(item_id))
    return matcher


def default_stopwords() -> frozenset[str]:
    """spaCy's English ``STOP_WORDS`` plus BERT contraction remnants."""
    return english_stop_words() | CONTRACTION_REMNANTS


def exact_match_ids(
    words_lower: Sequence[str], matcher: Mapping[str, int], max_n: int, stop: Sequence[bool], skip: Sequence[bool]
) -> np.ndarray:
    """Greedy left-to-right, longest-first n-gram title matching. Returns int64 ``(W,)``:
    the matched item id per word, 0 where none. Stopword-only n-grams and n-grams containing
    a skip word are not allowed."""
    w = len(words_lower)
    out = np.zeros(w, dtype=np.int64)
    i = 0
    while i < w:
        matched = 0
        for n in range(min(max_n, w - i), 0, -1):
            if any(skip[i : i + n]) or all(stop[i : i + n]):
                continue
            item = matcher.get(" ".join(words_lower[i : i + n]))
            if item:
                out[i : i + n] = item
                matched = n
                break
        i += matched or 1
    return out
