"""Input parsing: plain one-example-per-line files and fairseq-generate output."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Collection, Sequence

from .text import wordpiece_detok

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """Unusable input; the message names the file(s) and what is wrong."""


def read_lines(path: str | os.PathLike) -> list[str]:
    """All lines of a UTF-8 text file without their line ends.

    Empty lines are kept (an empty hypothesis is a real, if bad, response). Only ``\\n``
    (and a ``\\r`` before it) separates lines; a final line end does not start another line.
    """
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except OSError as e:
        raise InputError(f"cannot read {os.fspath(path)}: {e.strerror}") from e
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_text_lines(path: str | os.PathLike, detok: bool = False) -> list[str]:
    """:func:`read_lines`, with BERT WordPiece pieces (``##x``) joined when ``detok``."""
    lines = read_lines(path)
    return [wordpiece_detok(line) for line in lines] if detok else lines


def drop_tokens(lines: Sequence[str], tokens: Collection[str]) -> list[str]:
    """``lines`` with every whitespace-separated token in ``tokens`` removed (e.g. the sentence
    separator of a knowledge file, which is no knowledge); the other tokens keep their order
    and are joined by single spaces. No tokens: the lines unchanged."""
    if not tokens:
        return list(lines)
    drop = set(tokens)
    return [" ".join(w for w in line.split() if w not in drop) for line in lines]


def check_same_count(
    first: Sequence, first_name: str, second: Sequence, second_name: str
) -> None:
    """Raise :class:`InputError` naming both inputs and both counts if the lengths differ."""
    if len(first) != len(second):
        raise InputError(
            f"count mismatch: {first_name} has {len(first)} examples but {second_name} has "
            f"{len(second)}"
        )


@dataclass
class GenOutput:
    """The examples of one fairseq-generate output, sorted by example id."""

    ids: list[int]
    hypotheses: list[str]
    references: list[str] | None
    sources: list[str] | None
    used_detok: bool


_GEN_LINE = re.compile(r"^([STHDP])-(\d+)\t(.*)$")


def read_gen_out(path: str | os.PathLike) -> GenOutput:
    """Parse the stdout of ``fairseq-generate`` (one file): :func:`parse_gen_out` of its lines."""
    return parse_gen_out(read_lines(path), os.fspath(path))


def parse_gen_out(lines: Sequence[str], name: str) -> GenOutput:
    """Parse the lines of a ``fairseq-generate`` output; ``name`` (the file) is used in errors.

    Recognised lines: ``S-<id>\\t<source>``, ``T-<id>\\t<reference>``,
    ``H-<id>\\t<score>\\t<hypothesis>``, ``D-<id>\\t<score>\\t<detokenised hypothesis>`` and
    ``P-<id>\\t<positional scores>``; everything else (log lines, the final BLEU line, ``A-``/
    ``I-``/``E-`` lines) is ignored. The hypothesis of an id is its first ``D-`` line (fairseq
    prints the n-best list best first, so with ``--nbest`` > 1 this is the 1-best), or its
    first ``H-`` line if the id has no ``D-`` line. Examples are returned sorted by id.
    References/sources are ``None`` if the file has no ``T-``/``S-`` line at all; an id that has
    a hypothesis but lacks a ``T-`` line while others have one is an error.
    """
    src: dict[int, str] = {}
    tgt: dict[int, str] = {}
    hyp_h: dict[int, str] = {}
    hyp_d: dict[int, str] = {}
    for lineno, line in enumerate(lines, start=1):
        m = _GEN_LINE.match(line)
        if not m:
            continue
        kind, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind in "HD":
            parts = rest.split("\t", 1)
            try:
                float(parts[0])
            except ValueError:
                raise InputError(f"{name}:{lineno}: expected '{kind}-<id>\\t<score>\\t<text>'")
            text = parts[1] if len(parts) > 1 else ""
            (hyp_h if kind == "H" else hyp_d).setdefault(idx, text)
        elif kind == "S":
            src.setdefault(idx, rest)
        elif kind == "T":
            tgt.setdefault(idx, rest)
    ids = sorted(hyp_h.keys() | hyp_d.keys())
    if not ids:
        raise InputError(f"{name}: no H-/D- hypothesis lines (is this fairseq-generate output?)")
    missing_d = [i for i in ids if i not in hyp_d]
    if hyp_d and missing_d:
        logger.warning("%s: %d ids have no D- line, using their H- line", name, len(missing_d))
    hypotheses = [hyp_d[i] if i in hyp_d else hyp_h[i] for i in ids]

    def side(table: dict[int, str], prefix: str) -> list[str] | None:
        if not table:
            return None
        missing = [i for i in ids if i not in table]
        if missing:
            raise InputError(
                f"{name}: {len(missing)} of {len(ids)} hypotheses have no {prefix}- line "
                f"(first id {missing[0]})"
            )
        return [table[i] for i in ids]

    out = GenOutput(ids, hypotheses, side(tgt, "T"), side(src, "S"), used_detok=bool(hyp_d))
    logger.info(
        "%s: %d examples (%s lines)", name, len(ids), "D-" if out.used_detok else "H-"
    )
    return out


def align_by_ids(
    lines: list[str], ids: Sequence[int], lines_name: str, gen_name: str
) -> list[str]:
    """Pick the lines of a per-example side file (e.g. knowledge) for fairseq example ids.

    fairseq ids are 0-based line numbers of the test set. If the ids are exactly
    ``0..len(lines)-1`` the lines are returned as they are; if some ids are absent (examples
    fairseq skipped) the lines are picked by id, with a warning; an id past the end of the
    file is an error naming both files and both counts.
    """
    if list(ids) == list(range(len(lines))):
        return lines
    if ids and max(ids) >= len(lines):
        raise InputError(
            f"count mismatch: {lines_name} has {len(lines)} lines but {gen_name} has "
            f"{len(ids)} examples with ids up to {max(ids)}"
        )
    logger.warning(
        "%s has %d examples but %s has %d lines; picking lines by example id",
        gen_name, len(ids), lines_name, len(lines),
    )
    return [lines[i] for i in ids]
