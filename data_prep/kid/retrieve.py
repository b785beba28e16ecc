"""``kid-retrieve``: the top-k passages of a collection for every input context -- step 1 of
knowledge-infused decoding (KID, paper section 3.1), run offline.

Input: a prepared ``{split}.src`` file (one context per line). With ``--wordpiece`` BERT
WordPiece continuations are joined first (``"quant ##um"`` -> ``"quantum"``); separator tokens
of the form ``__word__`` (``__eou__``, ``__knowledge__``) are always dropped.

Retrievers (``--retriever``):

``dense`` (:mod:`data_prep.kid.dense_retriever`)
    a BERT bi-encoder with exact maximum inner-product search in faiss; passage embeddings
    are cached in ``--cache-dir``.
``sparse`` (:mod:`data_prep.kid.sparse_retrievers`)
    Okapi BM25; passages that share no term with the context are never returned.
``random`` (:mod:`data_prep.kid.sparse_retrievers`)
    ``k`` distinct passages drawn uniformly for each line, seeded (the paper's
    random-retriever ablation). Score 0.

Output (JSONL, one line per input line, in order)::

    {"line": 0, "passages": [{"id": "cmu_dog/3/1", "score": 0.6231}, ...]}

best first (ties broken by collection order). An empty context gets ``"passages": []``.
A stats JSON (``--stats``, default ``<output>.stats.json``) records counts and timings.

Sharding and resuming (:mod:`data_prep.shards`, the conventions of ``ki-mine``):
``--num-shards N --shard-id I`` retrieves for the contiguous line range
``[n·I//N, n·(I+1)//N)`` of ``--input`` into ``OUT.shard{I}of{N}.jsonl`` (``"line"`` = the line
in the whole input) with ``OUT.shard{I}of{N}.progress.json`` rewritten after every
``--chunk-lines`` lines (default 2000) and ``OUT.shard{I}of{N}.stats.json`` when done; a rerun
resumes where a killed run stopped, skips a complete shard, and refuses (naming the progress
file) a shard recorded with another input, collection or option. ``kid-merge-shards --output
OUT --num-shards N`` joins complete shards into ``OUT`` and ``OUT.stats.json``. With the
default ``--num-shards 1`` the one shard becomes ``OUT`` by itself (a killed run resumes the
same way). Shards equal the unsharded output byte for byte for ``sparse`` and ``random``
(row ``r`` of the random draw is the context's rank among the non-empty contexts of the
whole input); ``dense`` batches contexts by length inside a chunk, so a different chunking
changes its scores by float rounding only.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from typing import Any, Mapping, Optional, Protocol, Sequence

import numpy as np

from informative_dialogue.cli import console_script, setup_logging
from informative_dialogue.text_io import read_lines
from data_prep.kid.collection import Passage, add_collection_arguments, collection_from_args, collection_key
from data_prep.kid.dense_retriever import DenseEncoder, DenseRetriever
from data_prep.shards import add_shard_arguments, check_shard_flags, merge_shards, new_record, run_shard
from data_prep.kid.sparse_retrievers import BM25Retriever, RandomRetriever

logger = logging.getLogger(__name__)

_SEPARATOR_TOKEN = re.compile(r"^__\w+__$")


# --------------------------------------------------------------------------------------------
# contexts


def clean_context(line: str, wordpiece: bool = False) -> str:
    """One ``.src`` line as retrieval query text: ``##`` pieces joined (if ``wordpiece``),
    ``__word__`` separator tokens dropped, whitespace collapsed."""
    if wordpiece:
        line = re.sub(r"\s+##", "", line)
    return " ".join(t for t in line.split() if not _SEPARATOR_TOKEN.match(t))


def read_contexts(path: str | os.PathLike, wordpiece: bool = False) -> list[str]:
    """The cleaned contexts of a ``{split}.src`` file, one per line (read by
    :func:`informative_dialogue.text_io.read_lines`: a lone ``\\r`` or non-UTF-8 bytes are errors
    naming file and line)."""
    return [clean_context(line, wordpiece) for line in read_lines(path)]


# --------------------------------------------------------------------------------------------
# the retriever interface (implementations: dense_retriever, sparse_retrievers)


class Retriever(Protocol):
    """``search(queries, k)`` -> ``(scores (Q, k) float32, indices (Q, k) int64)``; index -1
    marks an empty slot (fewer than k hits)."""

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        ...


# --------------------------------------------------------------------------------------------
# driver


def retrieve(
    contexts: Sequence[str],
    passages: Sequence[Passage],
    retriever: Retriever,
    k: int,
    first_row: int = 0,
) -> list[list[tuple[str, float]]]:
    """Per context, ``[(passage id, score), ...]`` best first; ``[]`` for an empty context.
    ``first_row``: non-empty contexts before ``contexts[0]`` in the whole input (only the
    random retriever depends on it)."""
    live = [i for i, c in enumerate(contexts) if c.strip()]
    results: list[list[tuple[str, float]]] = [[] for _ in contexts]
    if not live or k < 1:
        return results
    if isinstance(retriever, RandomRetriever):
        scores, idx = retriever.rows(len(live), k, first_row)
    else:
        scores, idx = retriever.search([contexts[i] for i in live], k)
    for row, i in enumerate(live):
        results[i] = [(passages[j].id, float(s)) for s, j in zip(scores[row], idx[row]) if j >= 0]
    return results


def build_retriever(args: argparse.Namespace, passages: Sequence[Passage]) -> Retriever:
    """The retriever named by ``args.retriever``."""
    if args.retriever == "dense":
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        encoder = DenseEncoder(args.model, max_length=args.max_length, device=args.device)
        return DenseRetriever(passages, encoder, cache_dir=args.cache_dir, batch_size=args.batch_size)
    if args.retriever == "sparse":
        return BM25Retriever([p.retrieval_text() for p in passages], k1=args.bm25_k1, b=args.bm25_b)
    if args.retriever == "random":
        return RandomRetriever(len(passages), seed=args.seed)
    raise ValueError(f"unknown retriever {args.retriever!r}")


def format_result(line: int, hits: Sequence[tuple[str, float]]) -> str:
    """One output line (no ``\\n``): ``{"line": line, "passages": [{"id", "score"}, ...]}``."""
    rec: dict[str, Any] = {"line": line, "passages": [{"id": pid, "score": round(score, 6)} for pid, score in hits]}
    return json.dumps(rec, ensure_ascii=False)


def write_results(path: str | os.PathLike, results: Sequence[Sequence[tuple[str, float]]]) -> None:
    """The output JSONL (see the module docstring)."""
    with open(path, "w", encoding="utf-8") as f:
        for i, hits in enumerate(results):
            f.write(format_result(i, hits) + "\n")


def record_options(args: argparse.Namespace, passages: Sequence[Passage]) -> dict:
    """The options that shape the output (recorded by every shard; must match on resume/merge)."""
    options: dict[str, Any] = {
        "retriever": args.retriever, "top_k": args.top_k, "wordpiece": args.wordpiece,
        "collection_key": collection_key(passages), "chunk_lines": args.chunk_lines,
    }
    if args.retriever == "dense":
        options.update(model=args.model, max_length=args.max_length, batch_size=args.batch_size)
    elif args.retriever == "sparse":
        options.update(bm25_k1=args.bm25_k1, bm25_b=args.bm25_b)
    else:
        options.update(seed=args.seed)
    return options


def retrieval_stats(counts: Mapping[str, Any], record: Mapping[str, Any]) -> dict:
    """The stats of a shard or of the merged output from its summed counts."""
    o = record["options"]
    lines, search_s = counts.get("lines", 0), counts.get("search_seconds", 0.0)
    stats: dict[str, Any] = {
        "input": record["source"]["path"],
        "collection": record["collection"]["path"],
        "collection_key": o["collection_key"],
        "passages": record["collection"]["passages"],
        "retriever": o["retriever"],
        "top_k": o["top_k"],
        "lines": lines,
        "empty_contexts": counts.get("empty_contexts", 0),
        "empty_results": counts.get("empty_results", 0),
        "mean_hits": counts.get("hits", 0) / lines if lines else 0.0,
        "index_seconds": round(counts.get("index_seconds", 0.0), 3),
        "search_seconds": round(search_s, 3),
        "contexts_per_second": round(lines / max(search_s, 1e-9), 1),
    }
    if o["retriever"] == "dense":
        stats["model"] = o["model"]
        stats["passages_encoded"] = encoded = counts.get("passages_encoded", 0)
        if encoded:
            stats["passages_per_second"] = round(encoded / max(counts.get("encode_seconds", 0.0), 1e-9), 1)
    return stats


def build_parser() -> argparse.ArgumentParser:
    """The ``kid-retrieve`` argument parser."""
    p = argparse.ArgumentParser(
        prog="kid-retrieve",
        description="Top-k passages of a collection for every line of a {split}.src file (KID step 1).",
    )
    p.add_argument("--input", required=True, help="contexts, one per line (a prepared {split}.src)")
    add_collection_arguments(p)
    p.add_argument("--output", required=True, help="retrieval JSONL")
    p.add_argument("--stats", help="stats JSON (default: <output>.stats.json; only with --num-shards 1)")
    p.add_argument("--retriever", choices=["dense", "sparse", "random"], default="dense")
    p.add_argument("-k", "--top-k", type=int, default=5, help="passages per context (default 5)")
    p.add_argument("--wordpiece", action="store_true", help="join BERT WordPiece '##' continuations first")
    p.add_argument("--model", help="dense: BERT/DPR checkpoint directory (default all-MiniLM-L6-v2)")
    p.add_argument("--max-length", type=int, default=256, help="dense: word pieces per text")
    p.add_argument("--batch-size", type=int, default=64, help="dense: texts per encoder batch")
    p.add_argument("--device", help="dense: torch device (default cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=0, help="dense: torch CPU threads (0 = torch default)")
    p.add_argument("--cache-dir", help="dense: folder for cached passage embeddings (.npy)")
    p.add_argument("--bm25-k1", type=float, default=1.2)
    p.add_argument("--bm25-b", type=float, default=0.75)
    p.add_argument("--seed", type=int, default=1, help="random: seed")
    add_shard_arguments(p)
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: Optional[list[str]] = None, stop_after_chunks: Optional[int] = None) -> dict:
    """``kid-retrieve`` in-process; returns the stats it writes (of the shard when
    ``--num-shards`` > 1). ``stop_after_chunks`` (tests): stop as if killed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be >= 1")
    setup_logging(args.verbose)
    check_shard_flags(args.num_shards, args.shard_id, args.chunk_lines)
    if args.stats and args.num_shards > 1:
        raise ValueError("--stats names the merged stats: pass it to kid-merge-shards, not to a shard (--num-shards > 1)")
    passages = collection_from_args(args)
    contexts = read_contexts(args.input, args.wordpiece)
    record = new_record("kid-retrieve", args.input, len(contexts), record_options(args, passages),
                        collection={"path": os.path.abspath(args.collection), "passages": len(passages)})

    def prepare(lines_done: int) -> tuple[Any, dict]:  # nothing to rebuild on resume
        t0 = time.time()
        retriever = build_retriever(args, passages)
        live_before = np.concatenate([[0], np.cumsum([bool(c.strip()) for c in contexts])])  # (n + 1,)
        setup: dict[str, Any] = {"index_seconds": time.time() - t0}
        if isinstance(retriever, DenseRetriever):
            setup.update(passages_encoded=retriever.encoded, encode_seconds=retriever.encode_seconds)

        def process(start: int, end: int) -> tuple[list[str], dict]:
            t = time.time()
            chunk = contexts[start:end]
            results = retrieve(chunk, passages, retriever, args.top_k, first_row=int(live_before[start]))
            counts = {
                "lines": end - start, "empty_contexts": sum(1 for c in chunk if not c.strip()),
                "empty_results": sum(1 for r in results if not r), "hits": sum(len(r) for r in results),
                "search_seconds": time.time() - t,
            }
            return [format_result(start + j, hits) for j, hits in enumerate(results)], counts

        return process, setup

    stats = run_shard(args.output, record, prepare, retrieval_stats, args.num_shards, args.shard_id, args.chunk_lines,
                      stop_after_chunks=stop_after_chunks)
    if args.num_shards == 1 and "stopped_at_line" not in stats:
        stats = merge_shards(args.output, 1, retrieval_stats, "line", stats_path=args.stats, input_path=args.input, remove_shards=True)
    logger.info("kid-retrieve: %s", json.dumps(stats, sort_keys=True))
    return stats


cli = console_script(main)  # the console script: exit status 0 on success, 2 on input errors

if __name__ == "__main__":
    main()
