"""Binarise token-knowledge alignments for the ``knowledge_dialog`` task (``--knowledge-alignments``).

Reads ``{split}.align`` (one knowledge id per source token, ``informative_dialogue/ki/alignment_text.py``),
checks it line by line against the tokenised source text and, when ``fairseq-preprocess`` has
already written it to ``--destdir``, against the binarised source
(``{split}.{src}-{tgt}.{src}``: one id per token, EOS excluded), then writes
``{destdir}/{split}.align.ids.npy`` and ``{destdir}/{split}.align.offsets.npy``
(format: ``informative_dialogue/ki/alignments.py``; ids int32, int64 above 2**31 - 1), both
or neither.

Where the knowledge table is known, every id is checked against it: ``--ki-knowledge-table
PATH`` (the ``.npy`` table of ``ki-encode-knowledge``, the criterion's ``--ki-knowledge-table``:
rows ``0..R-1``, row 0 = no knowledge, so ids must be ``< R``; only the header is read) or
``--num-knowledge N`` (the knowledge base's item count: ids ``0..N``, a table of ``N + 1``
rows). An id out of range is a CorpusError naming the alignment file and its first offending
line, so a wrong table is caught here rather than as an index error inside training.

Usage::

    ki-binarize-alignments --align tok/train.align --source tok/train.src --destdir data-bin --split train \\
        [--ki-knowledge-table index/knowledge_table.npy]
"""
from __future__ import annotations

import argparse
import glob
import logging
import os

import numpy as np

from informative_dialogue.errors import CorpusError
from informative_dialogue.ki.alignment_text import check_knowledge_ids, read_alignments
from informative_dialogue.cli import setup_logging, console_script
from informative_dialogue.ki.alignments import KnowledgeAlignments
from informative_dialogue.ki.binarized_sizes import binarized_source_sizes

logger = logging.getLogger(__name__)


def knowledge_table_rows(path: str) -> int:
    """The row count of a knowledge table ``.npy`` (``(R, d_k)``), from its header only.

    Raises CorpusError naming the file when it is not a 2-D numeric ``.npy`` array."""
    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as exc:
        raise CorpusError(path, f"not a readable .npy knowledge table ({exc})") from exc
    if table.ndim != 2 or table.shape[0] < 1:
        raise CorpusError(path, f"expected a 2-D knowledge table (N+1, d_k), got shape {table.shape}")
    return int(table.shape[0])


def has_binarized_source(destdir: str, split: str, src: str, tgt: str) -> bool:
    """Whether ``destdir`` holds any file of the binarised source of ``split``
    (``{split}.{src}-{tgt}.{src}`` or ``{split}.{tgt}-{src}.{src}``, any ``--dataset-impl``)."""
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        prefix = os.path.join(destdir, f"{split}.{pair}.{src}")
        if os.path.exists(prefix) or glob.glob(glob.escape(prefix) + ".*"):
            return True
    return False


def binarize_alignments(
    align_path: str, source_path: str, destdir: str, split: str, src: str = "src", tgt: str = "tgt",
    table_rows: int | None = None, table_name: str | None = None,
) -> dict:
    """Validate ``align_path`` against ``source_path`` (and the binarised source, if present)
    and, when ``table_rows`` is given, every id against the knowledge table (ids ``<
    table_rows``; ``table_name`` names the table in errors); then write
    ``{destdir}/{split}.align.{ids,offsets}.npy``. Returns a summary dict.

    Raises:
        CorpusError / ValueError: naming the alignment file, the 1-based line and what differs.
    """
    rows = read_alignments(align_path, source_path)
    if table_rows is not None:
        check_knowledge_ids(rows, table_rows, align_path, table_name)
    alignments = KnowledgeAlignments.from_rows(rows, path=align_path)
    # fairseq's loader (for formats other than mmap) is imported only where a binarised source exists
    binarized = binarized_source_sizes(destdir, split, src, tgt) if has_binarized_source(destdir, split, src, tgt) \
        else None
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
        "checked_table_rows": table_rows,
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
    table = p.add_mutually_exclusive_group()
    table.add_argument("--ki-knowledge-table", metavar="PATH",
                       help="knowledge table .npy (N+1, d_k) of ki-encode-knowledge: every id must be < its row count")
    table.add_argument("--num-knowledge", type=int, metavar="N",
                       help="number of knowledge items N (ids 1..N, 0 = none): every id must be <= N")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    table_rows, table_name = None, None
    if args.ki_knowledge_table:
        table_rows, table_name = knowledge_table_rows(args.ki_knowledge_table), args.ki_knowledge_table
    elif args.num_knowledge is not None:
        if args.num_knowledge < 0:
            parser.error("--num-knowledge must be >= 0")
        table_rows, table_name = args.num_knowledge + 1, f"of --num-knowledge {args.num_knowledge}"
    return binarize_alignments(args.align, args.source, args.destdir, args.split, args.src_lang, args.tgt_lang,
                               table_rows, table_name)


cli = console_script(main)  # the console script: exit status 0 on success

if __name__ == "__main__":
    main()
