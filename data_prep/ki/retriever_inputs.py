"""Encoder inputs of the token-level knowledge retriever (KI, paper 4.2): tokenizing
knowledge texts and word-split sentences with the retriever's fast tokenizer, cutting them to
``max_length`` word pieces (:func:`truncate_ids` keeps ``[CLS]``/``[SEP]``), padding them into
batches, and aligning word pieces to words.

A word is *not encoded* (mask ``False``) when **any** of its pieces was cut, or when it yields
no WordPiece at all; the knowledge pooling mask marks the kept content tokens (special tokens
and padding excluded). The encoders themselves are in :mod:`data_prep.ki.retriever`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


def truncate_ids(ids: Sequence[int], content: Sequence[bool], max_length: int) -> tuple[list[int], int]:
    """Cut one tokenized sequence to at most ``max_length`` ids, keeping its leading and trailing
    special tokens (``[CLS]``, ``[SEP]``) and the first content tokens.

    ``content[p]`` is True for a real (non-special) token. Returns the new ids and the number of
    content tokens kept. Raises ``ValueError`` if the special tokens alone do not fit.
    """
    positions = [p for p, c in enumerate(content) if c]
    if not positions:
        if len(ids) > max_length:
            raise ValueError(f"max_length {max_length} is shorter than the {len(ids)} special tokens")
        return list(ids), 0
    first, last = positions[0], positions[-1]
    prefix, body, suffix = list(ids[:first]), list(ids[first : last + 1]), list(ids[last + 1 :])
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room next to {len(prefix) + len(suffix)} special tokens")
    body = body[:budget]
    return prefix + body + suffix, len(body)


@dataclass
class Batch:
    """Padded encoder inputs. ``input_ids``/``attention_mask``/``token_type_ids``: (B, L)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None


@dataclass
class WordBatch(Batch):
    """Plus the word alignment: ``piece_word`` (B, L) word index of each position (-1: special or
    padding), ``word_mask`` (B, W_max) words encoded in full."""

    piece_word: torch.Tensor
    word_mask: torch.Tensor


def pad_rows(tokenizer, rows: list[list[int]]) -> Batch:
    """``rows`` of ids padded with the tokenizer's pad id (0 without one), with the attention mask."""
    length = max(len(r) for r in rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    types = torch.zeros_like(ids) if "token_type_ids" in tokenizer.model_input_names else None
    return Batch(ids, mask, types)


def tokenize_knowledge(tokenizer, texts: Sequence[str]) -> list[tuple[list[int], list[bool]]]:
    """Untruncated ids of each text with its content flags (False at special tokens)."""
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"knowledge text {i}: expected str, got {type(t).__name__}")
    enc = tokenizer(list(texts), add_special_tokens=True, truncation=False, return_special_tokens_mask=True, verbose=False)
    out = []
    for i, (ids, special) in enumerate(zip(enc["input_ids"], enc["special_tokens_mask"])):
        content = [not s for s in special]
        if not any(content):
            raise ValueError(f"knowledge text {i} has no tokens to encode: {texts[i]!r}")
        out.append((ids, content))
    return out


def knowledge_batch(tokenizer, items: Sequence[tuple[list[int], list[bool]]], max_length: int) -> tuple[Batch, torch.Tensor]:
    """Padded inputs and the pooling mask (B, L): True at kept content tokens."""
    rows, pool_rows = [], []
    for ids, content in items:
        cut, kept = truncate_ids(ids, content, max_length)
        first = content.index(True)
        rows.append(cut)
        pool_rows.append([first <= p < first + kept for p in range(len(cut))])
    batch = pad_rows(tokenizer, rows)
    pool = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    for i, r in enumerate(pool_rows):
        pool[i, : len(r)] = torch.tensor(r, dtype=torch.bool)
    return batch, pool


def tokenize_words(tokenizer, sentences: Sequence[Sequence[str]]) -> list[tuple[list[int], list[int | None], int]]:
    """Untruncated ids, word id of each position (None: special) and word count, per sentence."""
    for i, words in enumerate(sentences):
        if isinstance(words, str) or not all(isinstance(w, str) for w in words):
            raise TypeError(f"sentence {i}: expected a list of words (str), got {words!r:.80}")
    nonempty = [list(w) if len(w) else ["x"] for w in sentences]  # tokenizers reject empty lists
    enc = tokenizer(nonempty, is_split_into_words=True, add_special_tokens=True, truncation=False, verbose=False)
    out = []
    for i, words in enumerate(sentences):
        ids, wids = enc["input_ids"][i], enc.word_ids(i)
        if not len(words):
            ids = [t for t, w in zip(ids, wids) if w is None]
            wids = [None] * len(ids)
        out.append((ids, wids, len(words)))
    return out


def word_batch(tokenizer, items: Sequence[tuple[list[int], list[int | None], int]], max_length: int) -> WordBatch:
    """Padded inputs of ``tokenize_words`` items cut to ``max_length``, with the word alignment."""
    rows, piece_rows, masks = [], [], []
    n_words = max([n for _, _, n in items], default=0)
    for ids, wids, n in items:
        content = [w is not None for w in wids]
        cut, kept = truncate_ids(ids, content, max_length)
        first = content.index(True) if any(content) else 0
        total = np.zeros(n, dtype=np.int64)
        kept_count = np.zeros(n, dtype=np.int64)
        piece_word = [-1] * len(cut)
        for p, w in enumerate(wids):
            if w is None:
                continue
            total[w] += 1
            if p - first < kept:
                kept_count[w] += 1
                piece_word[p] = w
        rows.append(cut)
        piece_rows.append(piece_word)
        masks.append((total > 0) & (kept_count == total))
    base = pad_rows(tokenizer, rows)
    piece = torch.full(base.input_ids.shape, -1, dtype=torch.long)
    word_mask = torch.zeros((len(items), n_words), dtype=torch.bool)
    for i, (pw, m) in enumerate(zip(piece_rows, masks)):
        piece[i, : len(pw)] = torch.tensor(pw, dtype=torch.long)
        word_mask[i, : len(m)] = torch.from_numpy(m)
    return WordBatch(base.input_ids, base.attention_mask, base.token_type_ids, piece, word_mask)
