"""Input parsing: plain one-example-per-line files and fairseq-generate output."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Collection, Sequence

from informative_dialogue import text_io
from informative_dialogue.errors import CorpusError

from .text import wordpiece_detok

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """Unusable input; the message names the file(s) and what is wrong."""


def read_lines(path: str | os.PathLike) -> list[str]:
    """All lines of a UTF-8 text file without their line ends.

    Empty lines are kept (an empty hypothesis is a real, if bad, response). Only ``\\n``
    (and a ``\\r`` before it) separates lines; a final line end does not start another line
    (:func:`informative_dialogue.text_io.read_lines`). A lone ``\\r`` inside a line (which
    text-mode readers would take for a line break, shifting every later example) and bytes that
    are not UTF-8 are an :class:`InputError` naming the file and line.
    """
    try:
        return text_io.read_lines(path)
    except CorpusError as e:
        raise InputError(str(e)) from None
    except OSError as e:
        raise InputError(f"cannot read {os.fspath(path)}: {e.strerror}") from e


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
    translated: int | None = None  # N of fairseq's final "Translated N sentences" line, if any


_GEN_LINE = re.compile(r"^([STHDP])-(\d+)\t(.*)$")
_TRANSLATED = re.compile(r"\bTranslated ([\d,]+) sentences\b")


def read_gen_out(path: str | os.PathLike) -> GenOutput:
    """Parse the stdout of ``fairseq-generate`` (one file): :func:`parse_gen_out` of its lines."""
    return parse_gen_out(read_lines(path), os.fspath(path))


def parse_gen_out(lines: Sequence[str], name: str) -> GenOutput:
    """Parse the lines of a ``fairseq-generate`` output; ``name`` (the file) is used in errors.

    Recognised lines: ``S-<id>\\t<source>``, ``T-<id>\\t<reference>``,
    ``H-<id>\\t<score>\\t<hypothesis>``, ``D-<id>\\t<score>\\t<detokenised hypothesis>`` and
    ``P-<id>\\t<positional scores>``; everything else (log lines, the final BLEU line, ``A-``/
    ``I-``/``E-`` lines) is ignored, except fairseq's final ``Translated N sentences`` line, whose N
    is kept (:attr:`GenOutput.translated`) to tell a complete output from a cut one. The
    hypothesis of an id is its first ``D-`` line (fairseq
    prints the n-best list best first, so with ``--nbest`` > 1 this is the 1-best), or its
    first ``H-`` line if the id has no ``D-`` line. Examples are returned sorted by id.
    References/sources are ``None`` if the file has no ``T-``/``S-`` line at all; an id that has
    a hypothesis but lacks a ``T-`` line while others have one is an error.
    """
    src: dict[int, str] = {}
    tgt: dict[int, str] = {}
    hyp_h: dict[int, str] = {}
    hyp_d: dict[int, str] = {}
    translated: int | None = None
    for lineno, line in enumerate(lines, start=1):
        m = _GEN_LINE.match(line)
        if not m:
            summary = _TRANSLATED.search(line)
            if summary:
                translated = int(summary.group(1).replace(",", ""))
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

    out = GenOutput(ids, hypotheses, side(tgt, "T"), side(src, "S"), used_detok=bool(hyp_d), translated=translated)
    logger.debug(
        "%s: %d examples (%s lines)", name, len(ids), "D-" if out.used_detok else "H-"
    )
    return out


@dataclass
class IdCheck:
    """How the example ids of a fairseq-generate output compare with the examples expected.

    ``expected``: the number of examples (ids ``0..expected-1``); ``missing``: expected ids
    without a hypothesis; ``extra``: ids without a reference (``>= expected``); ``kept``: the ids
    scored (all of them when complete); ``source``: what the expectation came from."""

    expected: int
    missing: list[int]
    extra: list[int]
    kept: list[int]
    source: str

    @property
    def complete(self) -> bool:
        return not self.missing and not self.extra


def check_ids(
    ids: Sequence[int],
    gen_name: str,
    expected: int | None,
    expected_name: str | None,
    translated: int | None = None,
    allow_partial: bool = False,
) -> IdCheck:
    """Check that a fairseq-generate output holds exactly the examples it should.

    The expected examples are ids ``0..expected-1`` where ``expected`` is the line count of a
    per-example file (``--ref``, ``--knowledge``; ``expected_name`` names it). Without one, the
    output must be complete by itself: its ids must run ``0..n-1`` without a gap and, where
    fairseq's ``Translated N sentences`` line is present, ``N`` must equal the number of
    examples (a cut output lacks the tail). Missing or extra ids raise :class:`InputError`
    naming the files and the first ids, unless ``allow_partial``: then the ids that have a
    reference are kept (extra ones dropped, with a warning).
    """
    present = set(ids)
    if expected is not None:
        source = f"{expected_name} ({expected} lines)"
    else:
        expected = max(max(present, default=-1) + 1, translated or 0)
        source = f"{gen_name} itself (ids 0..{expected - 1}" + (
            f", 'Translated {translated} sentences')" if translated is not None else ")")
        if translated is None:
            logger.warning("%s: no 'Translated N sentences' line and no --ref: cannot tell whether the output "
                           "was cut short", gen_name)
    missing = [i for i in range(expected) if i not in present]
    extra = [i for i in ids if i >= expected]
    kept = [i for i in ids if i < expected]
    check = IdCheck(expected, missing, extra, kept, source)
    if check.complete:
        return check

    def first(xs: list[int]) -> str:
        return ", ".join(map(str, xs[:5])) + (", ..." if len(xs) > 5 else "")

    problems = []
    if missing:
        problems.append(f"{len(missing)} of the {expected} expected examples are missing (ids {first(missing)})")
    if extra:
        problems.append(f"{len(extra)} ids have no reference (ids {first(extra)})")
    what = f"{gen_name} holds {len(ids)} examples but expected per {source}: " + "; ".join(problems)
    if not allow_partial:
        raise InputError(f"{what}. A partial output is scored only with --allow-partial")
    if not kept:
        raise InputError(f"{what}: no example left to score")
    logger.warning("%s; --allow-partial: scoring the %d examples with a reference", what, len(kept))
    return check


def align_by_ids(
    lines: list[str], ids: Sequence[int], lines_name: str, gen_name: str
) -> list[str]:
    """Pick the lines of a per-example side file (e.g. references, knowledge) for fairseq example
    ids (0-based line numbers of the test set), in the order of ``ids``.

    Check the ids first (:func:`check_ids`): a partial output is refused there unless asked
    for. Here an id past the end of the file is an error naming both files and both counts.
    """
    if list(ids) == list(range(len(lines))):
        return lines
    if ids and max(ids) >= len(lines):
        raise InputError(
            f"count mismatch: {lines_name} has {len(lines)} lines but {gen_name} has "
            f"{len(ids)} examples with ids up to {max(ids)}"
        )
    return [lines[i] for i in ids]
