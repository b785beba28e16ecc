"""Binarise token-knowledge alignments for the ``knowledge_dialog`` task (``--knowledge-alignments``).

Reads ``{split}.align`` (one knowledge id per source token, ``informative_dialogue/ki/alignment_text.py``),
checks it line by line against the tokenised source text and, when ``fairseq-preprocess`` has
already written it to ``--destdir``, against the binarised source
(``{split}.{src}-{tgt}.{src}``: one id per token, EOS excluded), then writes
``{destdir}/{split}.align.ids.npy`` and ``{destdir}/{split}.align.offsets.npy``
(format: ``informative_dialogue/ki/alignments.py``; ids int32, int64 above 2**31 - 1).

Usage::

    ki-binarize-alignments --align tok/train.align --source tok/train.src --destdir data-bin --split train
"""
from __future__ import annotations

import argparse
import logging
import os

import numpy as np

from informative_dialogue.ki.alignment_text import read_alignments
from informative_dialogue.cli import setup_logging, console_script
from informative_dialogue.ki.alignments import KnowledgeAlignments
from informative_dialogue.ki.binarized_sizes import binarized_source_sizes

logger = logging.getLogger(__name__)


def binarize_alignments(
    align_path: str, source_path: str, destdir: str, split: str, src: str = "src", tgt: str = "tgt"
) -> dict:
    """Validate ``align_path`` against ``source_path`` (and the binarised source, if present)
    and write ``{destdir}/{split}.align.{ids,offsets}.npy``. Returns a summary dict.

    Raises:
        CorpusError / ValueError: naming the alignment file, the 1-based line and both counts.
    """
    rows = read_alignments(align_path, source_path)
    alignments = KnowledgeAlignments.from_rows(rows, path=align_path)
    binarized = binarized_source_sizes(destdir, split, src, tgt)
    if binarized is None:
        logger.info("no binarised source %s.%s-%s.%s in %s yet; checked against the text source only",
                    split, src, tgt, src, destdir)
    else:
        bin_path, sizes = binarized
        try:
            alignments.validate_against_source(sizes, path_for_errors=align_path, eos_appended=True)
        except ValueError as exc:
            raise ValueError(f"{exc} [binarised source: {bin_path}]") from exc
        logger.info("checked against the binarised source %s", bin_path)
    summary = alignments.save(os.path.join(destdir, f"{split}.align"))
    summary.update({
        "align": os.path.abspath(align_path),
        "source": os.path.abspath(source_path),
        "checked_binarized": binarized is not None,
        "labelled_tokens": int(np.count_nonzero(alignments.ids)),
    })
    logger.info("%s: %d lines, %d ids (%d labelled), max id %d, stored as %s",
                summary["ids_path"], summary["lines"], summary["ids"], summary["labelled_tokens"],
                summary["max_id"], summary["dtype"])
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ki-binarize-alignments",
        description="Binarise token-knowledge alignments ({split}.align) next to fairseq-preprocess output "
        "for knowledge_dialog --knowledge-alignments.",
    )
    p.add_argument("--align", required=True, help="alignment text: one knowledge id per source token, per line")
    p.add_argument("--source", required=True, help="the tokenised source text the alignments label")
    p.add_argument("--destdir", required=True, help="fairseq data-bin folder (written by fairseq-preprocess)")
    p.add_argument("--split", required=True, help="split name (train, valid, ...)")
    p.add_argument("--src-lang", default="src", help="source language suffix used by fairseq-preprocess")
    p.add_argument("--tgt-lang", default="tgt", help="target language suffix used by fairseq-preprocess")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return binarize_alignments(args.align, args.source, args.destdir, args.split, args.src_lang, args.tgt_lang)


cli = console_script(main)  # the console script: exit status 0 on success

if __name__ == "__main__":
    main()
