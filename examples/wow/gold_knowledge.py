#!/usr/bin/env python
"""WoW mini with its gold knowledge, for decoding a pretrained LM with KID: posts, responses,
the turn's own Wikipedia sentences as the knowledge text and as the "retrieved" passages of
``kid-build-trie``.

Reads ``{split}.pro_qa.txt`` (``idx \\t post \\t response``) and ``{split}.sent_fact.txt``
(``idx \\t sentence \\t ...`` or ``no_fact``) of every split in ``--splits``, in that order, and
keeps the examples that have knowledge (``no_fact`` examples are counted and left out: KID has
nothing to infuse there), each with its first ``--max-sentences`` knowledge sentences (default
5; WoW mini lists on average 44.5 per turn, the retrieved topic passages in their order, first
sentences of the topic article first; 0 keeps all). An idx present in one file and not the other is an error naming both
files. Writes to ``--output``:

* ``src`` / ``tgt``: post / gold response, one example per line (raw text, no tokenisation);
* ``knowledge``: the example's gold sentences joined by a space (the kF1 reference);
* ``collection.jsonl``: one passage per gold sentence, id ``<split>/<idx>/<j>``;
* ``retrieval.jsonl``: line i lists example i's own passages (the ``kid-retrieve`` format), so
  ``kid-build-trie --retrieval retrieval.jsonl --collection collection.jsonl`` builds one trie
  per example from exactly its gold knowledge;
* ``ids``: ``<split>\\t<idx>`` of every kept example; ``stats.json``: the counts.

Usage::

    python3 examples/wow/gold_knowledge.py --input ../shared/data/wow_mini --output work/wow_gold
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import ExitStack
from typing import Dict, List, Optional, Sequence

from data_prep.corpora.wow import read_pro_qa, read_sent_fact
from informative_dialogue.cli import console_script, setup_logging
from informative_dialogue.text_io import OutputSet

logger = logging.getLogger("gold_knowledge")

OUTPUTS = ("src", "tgt", "knowledge", "collection.jsonl", "retrieval.jsonl", "ids", "stats.json")


def gold_examples(folder: str, splits: Sequence[str], max_sentences: int = 0) -> tuple[List[dict], Dict[str, int]]:
    """Examples with knowledge, in split then file order: dicts with ``split``, ``idx``,
    ``post``, ``response``, ``sentences`` (the first ``max_sentences``; 0: all); and counts
    (kept, no_fact) per split.

    Raises:
        CorpusError / ValueError: a missing file, or an idx in one file but not the other.
    """
    examples: List[dict] = []
    counts: Dict[str, int] = {}
    for split in splits:
        qa_path = os.path.join(folder, f"{split}.pro_qa.txt")
        fact_path = os.path.join(folder, f"{split}.sent_fact.txt")
        for path in (qa_path, fact_path):
            if not os.path.isfile(path):
                raise ValueError(f"{path}: no such file (expected the WoW mini release's {split} split)")
        qa = read_pro_qa(qa_path)
        facts, _ = read_sent_fact(fact_path)
        missing = sorted(set(qa) ^ set(facts))
        if missing:
            idx = missing[0]
            where = fact_path if idx in qa else qa_path
            raise ValueError(f"{where}: idx {idx} is missing ({len(missing)} idx in only one of {qa_path} and "
                             f"{fact_path}); the two files must list the same examples")
        kept = no_fact = 0
        for idx, (_, post, response) in qa.items():
            sentences = facts[idx][1]
            if not sentences:
                no_fact += 1
                continue
            if max_sentences > 0:
                sentences = sentences[:max_sentences]
            examples.append({"split": split, "idx": idx, "post": post, "response": response, "sentences": sentences})
            kept += 1
        counts[f"{split}_kept"] = kept
        counts[f"{split}_no_fact"] = no_fact
    return examples, counts


def write_outputs(examples: Sequence[dict], counts: Dict[str, int], out_dir: str) -> dict:
    """Write every output (atomically, all or none) and return the stats."""
    stats = {"examples": len(examples), **counts, "words_per_example": round(
                 sum(len(" ".join(e["sentences"]).split()) for e in examples) / max(len(examples), 1), 1),
             "sentences_per_example": round(sum(len(e["sentences"]) for e in examples) / max(len(examples), 1), 2)}
    with OutputSet() as out, ExitStack() as files:
        f = {name: files.enter_context(open(out.path(os.path.join(out_dir, name)), "w", encoding="utf-8"))
             for name in OUTPUTS}
        for line, ex in enumerate(examples):
            ids = [f"{ex['split']}/{ex['idx']}/{j}" for j in range(len(ex["sentences"]))]
            f["src"].write(ex["post"] + "\n")
            f["tgt"].write(ex["response"] + "\n")
            f["knowledge"].write(" ".join(ex["sentences"]) + "\n")
            f["ids"].write(f"{ex['split']}\t{ex['idx']}\n")
            for pid, sentence in zip(ids, ex["sentences"]):
                f["collection.jsonl"].write(json.dumps({"id": pid, "title": "", "text": sentence}) + "\n")
            f["retrieval.jsonl"].write(json.dumps({"line": line, "passages": [{"id": p, "score": 1.0} for p in ids]}) + "\n")
        f["stats.json"].write(json.dumps(stats, indent=1) + "\n")
    return stats


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="WoW mini folder ({split}.pro_qa.txt, {split}.sent_fact.txt)")
    p.add_argument("--splits", default="train,valid,test", help="comma-separated splits, pooled in this order")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--max-sentences", type=int, default=5, help="knowledge sentences kept per example (0: all)")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    splits = [s for s in args.splits.split(",") if s.strip()]
    if not splits:
        raise ValueError("--splits is empty")
    if args.max_sentences < 0:
        raise ValueError(f"--max-sentences must be >= 0, got {args.max_sentences}")
    examples, counts = gold_examples(args.input, splits, args.max_sentences)
    if not examples:
        raise ValueError(f"{args.input}: no example with knowledge in splits {', '.join(splits)}")
    os.makedirs(args.output, exist_ok=True)
    stats = write_outputs(examples, counts, args.output)
    logger.info("%d examples with gold knowledge -> %s (%s)", len(examples), args.output, stats)
    return 0


cli = console_script(main)

if __name__ == "__main__":
    sys.exit(cli())
