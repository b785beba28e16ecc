"""The retrieved passages of every example as one line of text: the grounding knowledge that
``dialog-metrics --knowledge`` scores (kF1: unigram F1 between an output and its knowledge).

Input: a ``kid-retrieve`` JSONL and the same collection flags (``--collection``,
``--collection-format``, ``--max-words``); output: line ``i`` = the texts of example ``i``'s
first ``--top-k`` passages (all by default), joined by single spaces (an empty line when
nothing was retrieved).
"""
from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

from informative_dialogue.cli import setup_logging
from data_prep.kid.build_trie import read_retrieval
from data_prep.kid.collection import add_collection_arguments, collection_from_args, index_by_id

logger = logging.getLogger("knowledge_text")


def knowledge_lines(retrieved: Sequence[Sequence[str]], passages: dict) -> list[str]:
    """One line per example: its passages' texts joined by spaces (``passages``: id -> Passage)."""
    return [" ".join(" ".join(passages[pid].text.split()) for pid in ids) for ids in retrieved]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write the knowledge file; returns the number of lines written."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--retrieval", required=True, help="kid-retrieve JSONL")
    add_collection_arguments(p)
    p.add_argument("--top-k", type=int, default=0, help="first k passages per example (0 = all)")
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    setup_logging()
    passages = index_by_id(collection_from_args(args))
    lines = knowledge_lines(read_retrieval(args.retrieval, passages, args.top_k), passages)
    with open(args.output, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    logger.info("%d knowledge lines -> %s", len(lines), args.output)
    return len(lines)


if __name__ == "__main__":
    main()
