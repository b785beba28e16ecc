"""Shared I/O for the data preparation commands: examples, validation, writing splits.

The writers here write into the folder they are given. Commands that write a set of files
give them a staging folder (:func:`informative_dialogue.text_io.staged_directory`) so that the
set moves into the real output only when complete; line-aligned inputs are read with
:mod:`informative_dialogue.text_io`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence


logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Example:
    """One dialogue example: the model input (context), the response, optional knowledge text."""

    src: str
    tgt: str
    knowledge: str | None = None


@dataclass
class SkipCounter:
    """Counts examples that were skipped on purpose, by reason, so nothing is dropped silently."""

    counts: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        """Record one skip; the first of each reason is logged with its location."""
        if reason not in self.counts:
            logger.warning("skipping %s (first at %s; all are counted in stats.json)", reason, where)
        self.counts[reason] = self.counts.get(reason, 0) + 1


def one_line(text: str) -> str:
    """Collapse all whitespace (newlines, tabs, runs of spaces) to single spaces."""
    return " ".join(text.split())


def dedup_examples(examples: Iterable[Example]) -> list[Example]:
    """Keep the first occurrence of each (src, tgt) pair, in order."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for ex in examples:
        key = (ex.src, ex.tgt)
        if key not in seen:
            seen.add(key)
            kept.append(ex)
    return kept


def write_split(out_dir: str | os.PathLike, split: str, examples: Sequence[Example]) -> dict[str, int]:
    """Write ``{split}.src``, ``{split}.tgt`` (and ``{split}.knowledge`` if any example has
    knowledge) under ``out_dir``. Every field must be a non-empty single line.

    Returns counts: ``{"examples": n}``.
    """
    os.makedirs(out_dir, exist_ok=True)
    has_knowledge = any(ex.knowledge is not None for ex in examples)
    names = ["src", "tgt"] + (["knowledge"] if has_knowledge else [])
    handles = {n: open(os.path.join(out_dir, f"{split}.{n}"), "w", encoding="utf-8") for n in names}
    try:
        for i, ex in enumerate(examples, 1):
            for name in names:
                value = getattr(ex, name)
                if value is None:
                    value = ""
                if "\n" in value or "\r" in value:
                    raise ValueError(f"{split} example {i}: {name} spans several lines")
                if name != "knowledge" and not value.strip():
                    raise ValueError(f"{split} example {i}: empty {name}")
                handles[name].write(value + "\n")
    finally:
        for h in handles.values():
            h.close()
    return {"examples": len(examples)}


def write_stats(out_dir: str | os.PathLike, stats: dict) -> None:
    """Write ``out_dir/stats.json`` and log it."""
    os.makedirs(out_dir, exist_ok=True)
    dump_stats(os.path.join(out_dir, "stats.json"), stats)


def dump_stats(path: str | os.PathLike, stats: dict) -> None:
    """Write ``stats`` as indented JSON (sorted keys) to ``path`` and log it."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2, sort_keys=True)
    logger.info("stats: %s", json.dumps(stats, sort_keys=True))


def add_text_options(parser: argparse.ArgumentParser, tokenizer_help: str, scope: str = "") -> None:
    """The text options every ``prepare-*`` command shares: ``--lowercase``, ``--dedup`` and
    ``--tokenizer none|bert``. ``scope`` prefixes the help texts (e.g. ``"(mini) "``)."""
    parser.add_argument("--lowercase", action="store_true", help=f"{scope}lower-case all text")
    parser.add_argument("--dedup", action="store_true",
                        help=f"{scope}keep only the first of identical (src, tgt) pairs" + ("" if scope else " per split"))
    parser.add_argument("--tokenizer", choices=["none", "bert"], default="none", help=tokenizer_help)
