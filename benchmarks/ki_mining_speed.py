#!/usr/bin/env python
"""KI mining throughput (tokens/s) on CPU over a real knowledge base, fp32 vs the int8 option.

Runs ``ki-mine`` (in this process, one variant after another, same retriever, index and
knowledge base) on the first ``--lines`` lines of a tokenised source file, for each variant of
``--variants``:

* ``fp32``        the default (exact encoder),
* ``int8``        ``--int8-encoder`` (dynamic int8 quantisation of the token encoder's Linear
                  layers; the index is unchanged),
* ``*-nodedup``   the same with ``--dedup-cache-size 0`` (every line encoded even when an identical
                  line was mined before): the throughput of the encoder + search alone.

Reported per variant (from the shard's ``.stats.json``): tokens/s, lines/s, the split of the
wall time into encoding, faiss search and the rest (planning, exact title matching, writing),
the dedup hit rate, the share of tokens with knowledge, and, against the first variant, the
share of tokens that got the same knowledge id (int8 is an approximation: this is its cost).
The knowledge-base size and the index type come from the index's ``meta.json``.

Usage::

    python benchmarks/ki_mining_speed.py --source work/dailydialog/tok/valid.src \\
        --index work/ki/index --knowledge-base work/ki/kb --retriever work/ki/retriever \\
        --lines 3000 --threads 2 --output benchmarks/results/ki_mining_speed.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time

import numpy as np

from informative_dialogue.ki.alignment_text import read_alignments
from informative_dialogue.cli import setup_logging
from data_prep.ki.mine import main as ki_mine_main

logger = logging.getLogger("ki_mining_speed")

VARIANT_FLAGS = {
    "fp32": [],
    "int8": ["--int8-encoder"],
    "fp32-nodedup": ["--dedup-cache-size", "0"],
    "int8-nodedup": ["--int8-encoder", "--dedup-cache-size", "0"],
}


def agreement(rows_a: list[np.ndarray], rows_b: list[np.ndarray]) -> dict:
    """Share of tokens with the same id in two alignments of the same lines, overall and among
    the tokens that either variant labels."""
    a = np.concatenate(rows_a) if rows_a else np.zeros(0, dtype=np.int64)
    b = np.concatenate(rows_b) if rows_b else np.zeros(0, dtype=np.int64)
    if a.shape != b.shape:
        raise ValueError(f"alignments of different lengths: {a.shape} vs {b.shape}")
    labelled = (a > 0) | (b > 0)
    return {
        "same_id_all_tokens": float((a == b).mean()) if a.size else 1.0,
        "same_id_labelled_tokens": float((a[labelled] == b[labelled]).mean()) if labelled.any() else 1.0,
    }


def run_variant(name: str, source: str, args: argparse.Namespace, workdir: str) -> tuple[dict, list[np.ndarray]]:
    """Mine ``source`` with the flags of variant ``name``; returns (stats, rows)."""
    prefix = os.path.join(workdir, name)
    argv = [
        "--source", source, "--index", args.index, "--knowledge-base", args.knowledge_base,
        "--retriever", args.retriever, "--output", prefix, "--subword-format", args.subword_format,
        "--gpu", "no", "--device", "cpu", "--no-progress", *VARIANT_FLAGS[name],
    ]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    stats = ki_mine_main(argv)
    wall = time.perf_counter() - t0
    rows = read_alignments(f"{prefix}.shard0of1.align", source)
    run = stats["this_run"]
    result = {
        "flags": VARIANT_FLAGS[name],
        "lines": run["lines"],
        "tokens": run["tokens"],
        "mine_seconds": run["seconds"],
        "tokens_per_s": run["tokens_per_s"],
        "lines_per_s": run["lines_per_s"],
        "encode_s": run["encode_s"],
        "search_s": run["search_s"],
        "other_s": run["other_s"],
        "process_seconds_incl_loading": round(wall, 3),
        "dedup_hit_rate": stats["dedup_hit_rate"],
        "share_tokens_with_knowledge": stats["share_tokens_with_knowledge"],
        "share_content_tokens_with_knowledge": stats["share_content_tokens_with_knowledge"],
    }
    logger.info("%s: %.0f tokens/s (%d tokens, %.1f s; encode %.1f s, search %.1f s)", name,
                result["tokens_per_s"], result["tokens"], result["mine_seconds"], result["encode_s"], result["search_s"])
    return result, rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="tokenised source file (e.g. work/dailydialog/tok/valid.src)")
    p.add_argument("--index", required=True, help="ki-encode-knowledge output directory")
    p.add_argument("--knowledge-base", required=True)
    p.add_argument("--retriever", required=True)
    p.add_argument("--subword-format", default="wordpiece")
    p.add_argument("--lines", type=int, default=3000, help="first N lines of --source")
    p.add_argument("--variants", nargs="+", default=["fp32", "int8", "fp32-nodedup", "int8-nodedup"],
                   choices=sorted(VARIANT_FLAGS))
    p.add_argument("--threads", type=int, default=2, help="torch/faiss CPU threads")
    p.add_argument("--output", default="benchmarks/results/ki_mining_speed.json")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    with open(os.path.join(args.index, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    report: dict = {
        "source": os.path.abspath(args.source),
        "lines": args.lines,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "index": {k: meta.get(k) for k in ("n_items", "index_type", "projection_dim", "table_dtype") if k in meta},
        "variants": {},
    }
    with tempfile.TemporaryDirectory(prefix="ki_mining_speed_") as workdir:
        source = os.path.join(workdir, "source.txt")
        with open(args.source, encoding="utf-8") as fin:
            head = [line for _, line in zip(range(args.lines), fin)]
        if len(head) < args.lines:
            raise ValueError(f"{args.source}: {len(head)} lines, fewer than --lines {args.lines}")
        with open(source, "w", encoding="utf-8") as fout:
            fout.writelines(head)
        reference_rows = None
        for name in args.variants:
            result, rows = run_variant(name, source, args, workdir)
            if reference_rows is None:
                reference_rows, report["reference_variant"] = rows, name
            else:
                result["agreement_with_reference"] = agreement(reference_rows, rows)
            report["variants"][name] = result
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    logger.info("wrote %s", args.output)
    return report


if __name__ == "__main__":
    main()
