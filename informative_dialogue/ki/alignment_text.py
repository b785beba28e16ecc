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
import re
from typing import Iterable, Iterator, Sequence

import numpy as np

from informative_dialogue.errors import CorpusError
from informative_dialogue import text_io

SUBWORD_FORMATS = ("wordpiece", "sentencepiece", "none")
SENTENCEPIECE_MARK = "\u2581"
_ASCII_ID = re.compile(r"[0-9]+")


def is_knowledge_id(field: str) -> bool:
    """Whether ``field`` is a non-negative integer in ASCII digits (``str.isdigit`` alone would
    accept ``"²"`` or ``"٣"``, which ``int`` then refuses or reads as another number)."""
    return _ASCII_ID.fullmatch(field) is not None


def parse_alignment_line(
    line: str, path: str | os.PathLike, line_no: int, n_tokens: int | None = None, source_path: str | None = None,
    source_line: int | None = None,
) -> np.ndarray:
    """Parse one alignment line into an ``int64`` array ``(n,)``.

    Raises :class:`CorpusError` naming ``path`` and ``line_no`` when a field is not a
    non-negative integer in ASCII digits (:func:`is_knowledge_id`), does not fit in 64 bits, or
    when ``n_tokens`` is given and the count differs (the message names both counts and the
    source file, and ``source_line``, the source's line, where it is not ``line_no``)."""
    fields = line.split()
    for field in fields:
        if not is_knowledge_id(field):
            raise CorpusError(
                path, f"expected non-negative integer knowledge ids, got {field!r} (ASCII digits 0-9 only)", line_no
            )
        if len(field) > 18 and int(field) > np.iinfo(np.int64).max:
            raise CorpusError(path, f"knowledge id {field} does not fit in 64 bits", line_no)
    if n_tokens is not None and len(fields) != n_tokens:
        src_line = line_no if source_line is None else source_line
        where = f"{source_path} line {src_line}" if source_path else f"source line {src_line}"
        raise CorpusError(
            path,
            f"{len(fields)} knowledge ids but {where} has {n_tokens} tokens (expected one id per token)",
            line_no,
        )
    return np.asarray([int(f) for f in fields], dtype=np.int64)


def read_text_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a line-aligned UTF-8 text file (:func:`informative_dialogue.text_io.read_lines`:
    split on ``\\n`` only, a final newline ends the last line, a lone ``\\r`` or non-UTF-8 bytes
    are a CorpusError naming the file and line), so line numbers agree with ``wc -l`` and
    fairseq-preprocess."""
    return text_io.read_lines(path)


def check_knowledge_ids(
    rows: Sequence[np.ndarray], rows_in_table: int, path: str | os.PathLike, table: str | None = None
) -> None:
    """Refuse any id ``>= rows_in_table`` (the knowledge table has rows ``0..rows_in_table - 1``,
    row 0 = no knowledge): CorpusError naming ``path`` and the first offending line."""
    for i, row in enumerate(rows, 1):
        if row.size and int(row.max()) >= rows_in_table:
            bad = int(row.max())
            where = f"the knowledge table {table}" if table else "the knowledge table"
            raise CorpusError(
                path,
                f"knowledge id {bad} is out of range: {where} has {rows_in_table} rows (ids 0..{rows_in_table - 1})",
                i,
            )


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
    """Write one line per row, all or nothing (a failure leaves ``path`` as it was); returns the
    number of lines written."""
    return text_io.write_text_atomic(path, (format_alignment_line(row) for row in rows))


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
    """The lines of a line-aligned text file without their line ends
    (:func:`informative_dialogue.text_io.iter_lines`)."""
    return text_io.iter_lines(path)
