"""Join ``ki-mine`` shards into one alignment file and write its coverage statistics.

``ki-merge-alignments --output PREFIX.align --num-shards N [--source FILE.src]`` checks that
every shard ``PREFIX.shard{I}of{N}`` is complete per its progress file (same source, index and
options in all shards; contiguous line ranges that add up to the source; align file size equal
to the recorded byte offset), validates every shard line against its source line (one id per
token; errors name the shard file and line and the source line), concatenates the shards in
order into ``PREFIX.align`` and writes ``PREFIX.align.stats.json``. Both are staged and moved
into place together (:class:`informative_dialogue.text_io.OutputSet`): a failure leaves an
earlier ``PREFIX.align`` and its stats as they were. The stats:

- the summed shard counts and shares (``share_tokens_with_knowledge`` over all tokens,
  ``share_content_tokens_with_knowledge``: content tokens (neither stopwords/punctuation by
  the miner's rule nor skip tokens) with knowledge over content tokens; exact-match vs retrieved shares of the knowledge
  tokens, dedup hit rate);
- paper Table 7 style diversity: ``distinct_items_per_token_type`` (for each source token
  type with any knowledge, the number of distinct non-zero ids it is aligned to over the
  corpus, averaged over those types; token = whitespace token of the source, e.g. a
  WordPiece); ``distinct_items_per_sentence`` (distinct non-zero ids of a line, averaged over all lines)
  and ``..._with_knowledge`` (over lines with at least one id); ``distinct_items_used``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from collections import defaultdict
from typing import Sequence

import numpy as np
from tqdm import tqdm

from informative_dialogue.ki.alignment_text import parse_alignment_line, read_text_lines
from informative_dialogue.errors import CorpusError
from informative_dialogue.cli import setup_logging, console_script
from informative_dialogue.text_io import OutputSet
from data_prep.ki.shards import COUNT_KEYS, shard_paths, strip_prefix, summarize
from data_prep.shards import complete_shards

logger = logging.getLogger(__name__)


def diversity_stats(rows: Sequence[np.ndarray], source_lines: Sequence[str], progress: bool = False) -> dict:
    """Table-7 style diversity of an alignment (``rows[i]`` int64 ``(n_tokens_i,)`` for
    ``source_lines[i]``)."""
    per_type: dict[str, set[int]] = defaultdict(set)
    used: set[int] = set()
    per_sentence = []
    for ids, line in tqdm(zip(rows, source_lines), total=len(rows), desc="coverage", disable=not progress):
        nz = ids[ids > 0]
        distinct = set(nz.tolist())
        per_sentence.append(len(distinct))
        used |= distinct
        for tok, i in zip(line.split(), ids.tolist()):
            if i > 0:
                per_type[tok].add(i)
    with_k = [n for n in per_sentence if n > 0]
    return {
        "distinct_items_per_token_type": float(np.mean([len(s) for s in per_type.values()])) if per_type else 0.0,
        "token_types_with_knowledge": len(per_type),
        "distinct_items_per_sentence": float(np.mean(per_sentence)) if per_sentence else 0.0,
        "distinct_items_per_sentence_with_knowledge": float(np.mean(with_k)) if with_k else 0.0,
        "distinct_items_used": len(used),
    }


def merge_shards(output: str, num_shards: int, source: str | None = None, progress: bool = True) -> dict:
    """Merge ``num_shards`` shards of ``output`` (``PREFIX.align`` or ``PREFIX``) into
    ``PREFIX.align``; returns (and writes) the coverage stats."""
    prefix = strip_prefix(output)
    out_path = prefix + ".align"
    paths = [shard_paths(prefix, num_shards, i) for i in range(max(num_shards, 0))]
    states, source = complete_shards(
        num_shards, lambda i: {"data": paths[i]["align"], "progress": paths[i]["progress"]}, ("options", "index"), source,
        command="ki-mine", run_args=f"--output {prefix}", origin="source", made="mined")
    files = [p["align"] for p in paths]
    source_lines = read_text_lines(source)
    rows: list[np.ndarray] = []
    for st, path in zip(states, files):
        shard_lines = read_text_lines(path)
        expected = st["end_line"] - st["start_line"]
        if len(shard_lines) != expected:
            raise CorpusError(path, f"{len(shard_lines)} lines but its progress file records {expected}")
        for j, line in enumerate(shard_lines):
            src_no = st["start_line"] + j  # 0-based line of the source
            rows.append(parse_alignment_line(line, path, j + 1, len(source_lines[src_no].split()), source, src_no + 1))
    counts = {k: sum(st["counts"].get(k, 0) for st in states) for k in COUNT_KEYS}
    if counts["lines"] != len(rows) or counts["tokens"] != sum(len(r) for r in rows):
        raise ValueError(f"shard counts ({counts['lines']} lines, {counts['tokens']} tokens) do not add up to {out_path}")
    stats = {
        "align": os.path.abspath(out_path),
        "source": os.path.abspath(source),
        "num_shards": num_shards,
        "counts": counts,
        **summarize(counts),
        **diversity_stats(rows, source_lines, progress=progress),
        "mining_seconds": sum(st.get("elapsed_s", 0.0) for st in states),
        "options": states[0]["options"],
    }
    with OutputSet() as out:  # PREFIX.align and its stats, both or neither
        with open(out.path(out_path), "wb") as merged:
            for path in files:
                with open(path, "rb") as f:
                    while block := f.read(1 << 22):
                        merged.write(block)
        with open(out.path(out_path + ".stats.json"), "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=2, sort_keys=True)
    logger.info(
        "merged %d shard(s) -> %s: %d lines, %d tokens, %.1f%% with knowledge (%.1f%% of content tokens); "
        "%.2f items per token type, %.2f per sentence, %d distinct items",
        num_shards, out_path, counts["lines"], counts["tokens"], 100 * stats["share_tokens_with_knowledge"],
        100 * stats["share_content_tokens_with_knowledge"], stats["distinct_items_per_token_type"],
        stats["distinct_items_per_sentence"], stats["distinct_items_used"],
    )
    return stats


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ki-merge-alignments",
        description="Join complete ki-mine shards into PREFIX.align (validated one id per token) and write "
        "PREFIX.align.stats.json with coverage and diversity statistics.",
    )
    p.add_argument("--output", required=True, help="PREFIX.align (the shards are PREFIX.shard{I}of{N}.*)")
    p.add_argument("--num-shards", type=int, required=True)
    p.add_argument("--source", default=None, help="source file (default: the one recorded by the shards; must match)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return merge_shards(args.output, args.num_shards, args.source, progress=not args.no_progress)


cli = console_script(main)  # the console script: exit status 0 on success

if __name__ == "__main__":
    main()
