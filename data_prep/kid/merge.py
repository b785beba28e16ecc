"""``kid-merge-shards``: join the complete shards of a ``kid-retrieve`` or ``kid-build-trie`` run
(``--num-shards N``) into the output and its stats, as ``ki-merge-alignments`` does for
``ki-mine`` (checks and file layout: :mod:`data_prep.shards`).

``kid-merge-shards --output OUT.jsonl --num-shards N [--input FILE] [--stats PATH]`` reads which
command wrote the shards from shard 0's progress file, checks every shard (present, complete,
same command, input and options, contiguous line ranges covering the input, sizes and line
counts as recorded, every line's ``"line"``/``"id"`` equal to its line in the input, the input
file unchanged), then writes ``OUT`` (the shards concatenated: byte-identical to an unsharded
run) and ``OUT.stats.json`` (``--stats``; the stats of an unsharded run from the summed counts,
plus ``num_shards``), both or neither. The shard files are kept.
"""
from __future__ import annotations

import argparse
import logging
from typing import Optional

from informative_dialogue.cli import console_script, setup_logging
from data_prep.kid.build_trie import trie_stats
from data_prep.kid.retrieve import retrieval_stats
from data_prep.shards import merge_shards, shard_command

logger = logging.getLogger(__name__)

COMMANDS = {  # format recorded by the shards -> (stats from counts, field holding the line number)
    "kid-retrieve/1": (retrieval_stats, "line"),
    "kid-build-trie/1": (trie_stats, "id"),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``kid-merge-shards`` argument parser."""
    p = argparse.ArgumentParser(
        prog="kid-merge-shards",
        description="Join complete kid-retrieve / kid-build-trie shards (OUT.shard{I}of{N}.jsonl) into OUT and OUT.stats.json.",
    )
    p.add_argument("--output", required=True, help="the --output given to the sharded runs")
    p.add_argument("--num-shards", type=int, required=True)
    p.add_argument("--input", help="the input the shards were computed from (default: the recorded path; must match)")
    p.add_argument("--stats", help="stats JSON (default: <output>.stats.json)")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: Optional[list[str]] = None) -> dict:
    """``kid-merge-shards`` in-process; returns the merged stats."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.num_shards < 1:
        raise ValueError(f"--num-shards must be >= 1, got {args.num_shards}")
    fmt = shard_command(args.output, args.num_shards)
    if fmt not in COMMANDS:
        raise ValueError(f"{args.output}: shards of an unknown format {fmt!r} (known: {', '.join(COMMANDS)})")
    summarize, line_key = COMMANDS[fmt]
    return merge_shards(args.output, args.num_shards, summarize, line_key, stats_path=args.stats, input_path=args.input)


cli = console_script(main)  # the console script: exit status 0 on success, 2 on input errors

if __name__ == "__main__":
    main()
