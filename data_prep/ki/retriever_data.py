"""Weak-supervision data of the token-level knowledge retriever of knowledge internalization
(KI, paper 4.1): reading the sentences, splitting them into words as the BERT tokenizer does,
and marking the words that train.

Data (4.1): each sentence ``S`` (the first sentence of a Wikipedia article) is a knowledge item
``K`` (the same text), and every word of ``S`` is aligned to ``K``. Sentences come from
``--knowledge-base DIR`` (``data_prep.ki.knowledge_base``; items whose source is in ``--sources``,
default ``wikipedia``; their ``texts``) or ``--sentences FILE``: plain text (one sentence per
line), ``.tsv`` (the last tab-separated field of each line is the sentence) or ``.jsonl``
(objects with a ``"text"`` string). Empty lines are errors; exact duplicates are removed (they
would be false in-batch negatives) and counted in the log.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Sequence

from informative_dialogue.errors import CorpusError
from informative_dialogue.stop_words import english_stop_words, is_stopword

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSentence:
    """One weakly-supervised example: the knowledge text, its words and which words train."""

    text: str
    words: tuple[str, ...]
    trainable: tuple[bool, ...]


def read_sentences(path: str | os.PathLike) -> list[str]:
    """Sentences of a plain-text (one per line), ``.tsv`` (last field) or ``.jsonl`` (``"text"``)
    file. Raises ``CorpusError`` (file, line) on an empty sentence or a malformed line."""
    path = os.fspath(path)
    kind = "jsonl" if path.endswith(".jsonl") else "tsv" if path.endswith(".tsv") else "text"
    out = []
    with open(path, encoding="utf-8", newline="\n") as f:
        for number, raw in enumerate(f, 1):
            line = raw.rstrip("\n").rstrip("\r")
            if kind == "jsonl":
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(path, f"expected a JSON object ({exc})", line=number) from None
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise CorpusError(path, 'expected a JSON object with a string "text"', line=number)
                text = obj["text"]
            elif kind == "tsv":
                text = line.split("\t")[-1]
            else:
                text = line
            text = " ".join(text.split())
            if not text:
                raise CorpusError(path, "expected a sentence, found an empty one", line=number)
            out.append(text)
    if not out:
        raise CorpusError(path, "expected at least one sentence, the file is empty")
    return out


def sentences_from_knowledge_base(directory: str, sources: Sequence[str] = ("wikipedia",)) -> list[str]:
    """The ``texts`` of the knowledge-base items whose source is in ``sources``."""
    from data_prep.ki.knowledge_base import load_knowledge_base

    kb = load_knowledge_base(directory)
    wanted = set(sources)
    texts = [t for s, t in zip(kb.sources, kb.texts) if s in wanted]
    if not texts:
        found = sorted(set(kb.sources))
        raise CorpusError(directory, f"expected items with source in {sorted(wanted)}, found sources {found}")
    logger.info("knowledge base %s: %d of %d items from %s", directory, len(texts), len(kb.texts), sorted(wanted))
    return texts


def split_words(tokenizer, text: str) -> list[str]:
    """Words of ``text`` as the BERT tokenizer sees them: its normaliser (lower-casing, accent
    handling) then its pre-tokeniser (whitespace and punctuation splits)."""
    backend = tokenizer.backend_tokenizer
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    if backend.pre_tokenizer is None:
        return text.split()
    return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(text)]


def prepare_sentences(tokenizer, texts: Sequence[str], skip_stopwords: bool = True) -> list[TrainingSentence]:
    """Split each text into words and mark the words that train."""
    stop = english_stop_words() if skip_stopwords else frozenset()
    out = []
    for text in texts:
        words = split_words(tokenizer, text)
        trainable = tuple(not is_stopword(w, stop) if skip_stopwords else True for w in words)
        out.append(TrainingSentence(text, tuple(words), trainable))
    return out


def dedup(texts: Sequence[str]) -> list[str]:
    """First occurrence of each text, in order; the number removed is logged."""
    out = list(dict.fromkeys(texts))
    if len(out) < len(texts):
        logger.info("removed %d duplicate sentences (they would be false in-batch negatives)", len(texts) - len(out))
    return out
