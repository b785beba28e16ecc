"""Token-knowledge alignment files as text, and subword tokens grouped into words.

Alignment text format (``{split}.align`` beside ``{split}.src``; the knowledge-internalization
release's ``.voken.src``): one line per source line, space-separated non-negative integer
knowledge ids, exactly one per whitespace-separated source token; ``0`` = no knowledge.
Ids index the knowledge base (``data_prep.ki.knowledge_base``) and the knowledge table; they are
64-bit in memory (``np.int64``).

Subword formats (how a tokenised source line is grouped into words):
- ``wordpiece``: BERT WordPiece, continuations start with ``##`` (``hog ##wart ##s``);
- ``sentencepiece``: a word starts with ``▁`` (U+2581); tokens without it continue the word;
- ``none``: every token is a word.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator, Sequence

import numpy as np

from informative_dialogue.errors import CorpusError

SUBWORD_FORMATS = ("wordpiece", "sentencepiece", "none")
SENTENCEPIECE_MARK = "\u2581"


def parse_alignment_line(
    line: str, path: str | os.PathLike, line_no: int, n_tokens: int | None = None, source_path: str | None = None
) -> np.ndarray:
    """Parse one alignment line into an ``int64`` array ``(n,)``.

    Raises :class:`CorpusError` naming ``path`` and ``line_no`` when a field is not a
    non-negative integer, or when ``n_tokens`` is given and the count differs (the message
    names both counts and the source file)."""
    fields = line.split()
    for field in fields:
        if not field.isdigit():
            raise CorpusError(path, f"expected non-negative integer knowledge ids, got {field!r}", line_no)
    if n_tokens is not None and len(fields) != n_tokens:
        where = f"{source_path} line {line_no}" if source_path else f"source line {line_no}"
        raise CorpusError(
            path,
            f"{len(fields)} knowledge ids but {where} has {n_tokens} tokens (expected one id per token)",
            line_no,
        )
    return np.asarray([int(f) for f in fields], dtype=np.int64)


def read_text_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 text file split on ``\n`` only (a final newline ends the last line,
    it does not start an empty one), so line numbers agree with ``wc -l`` and fairseq-preprocess."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_alignments(align_path: str | os.PathLike, source_path: str | os.PathLike | None = None) -> list[np.ndarray]:
    """All lines of ``align_path`` as ``int64`` arrays, validated one-to-one against
    ``source_path`` (same number of lines, one id per token) when it is given."""
    align_path = os.fspath(align_path)
    align_lines = read_text_lines(align_path)
    if source_path is None:
        return [parse_alignment_line(line, align_path, i + 1) for i, line in enumerate(align_lines)]
    source_path = os.fspath(source_path)
    source_lines = read_text_lines(source_path)
    if len(source_lines) != len(align_lines):
        raise CorpusError(
            align_path, f"{len(align_lines)} alignment lines but {source_path} has {len(source_lines)} lines"
        )
    return [
        parse_alignment_line(line, align_path, i + 1, len(src.split()), source_path)
        for i, (line, src) in enumerate(zip(align_lines, source_lines))
    ]


def format_alignment_line(ids: Iterable[int]) -> str:
    """``[3, 0, 70000] -> "3 0 70000"`` (no newline)."""
    return " ".join(str(int(i)) for i in ids)


def write_alignments(path: str | os.PathLike, rows: Iterable[Sequence[int]]) -> int:
    """Write one line per row; returns the number of lines written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(format_alignment_line(row) + "\n")
            n += 1
    return n


def word_spans(tokens: Sequence[str], subword_format: str = "wordpiece") -> list[tuple[int, int]]:
    """Group subword ``tokens`` into words: a list of ``(start, end)`` token index ranges
    (end exclusive) covering every token in order.

    A continuation token with no word to continue (``##s`` first) starts its own word."""
    if subword_format not in SUBWORD_FORMATS:
        raise ValueError(f"subword_format must be one of {SUBWORD_FORMATS}, got {subword_format!r}")
    spans: list[tuple[int, int]] = []
    for i, tok in enumerate(tokens):
        if subword_format == "wordpiece":
            continues = tok.startswith("##") and len(tok) > 2
        elif subword_format == "sentencepiece":
            continues = not tok.startswith(SENTENCEPIECE_MARK)
        else:
            continues = False
        if continues and spans:
            spans[-1] = (spans[-1][0], i + 1)
        else:
            spans.append((i, i + 1))
    return spans


def word_text(tokens: Sequence[str], span: tuple[int, int], subword_format: str = "wordpiece") -> str:
    """The surface word of ``tokens[span[0]:span[1]]`` (markers removed)."""
    pieces = tokens[span[0] : span[1]]
    if subword_format == "wordpiece":
        return "".join(p[2:] if (j > 0 and p.startswith("##") and len(p) > 2) else p for j, p in enumerate(pieces))
    if subword_format == "sentencepiece":
        return "".join(pieces).replace(SENTENCEPIECE_MARK, "")
    return pieces[0]


def words_of(tokens: Sequence[str], subword_format: str = "wordpiece") -> tuple[list[str], list[tuple[int, int]]]:
    """``(words, spans)`` of a tokenised line (see :func:`word_spans`)."""
    spans = word_spans(tokens, subword_format)
    return [word_text(tokens, s, subword_format) for s in spans], spans


def iter_lines(path: str | os.PathLike) -> Iterator[str]:
    """The lines of a text file without their newline characters."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield line.rstrip("\n")
