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
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from typing import Any, Optional, Protocol, Sequence

import numpy as np

from informative_dialogue.cli import console_script, setup_logging
from informative_dialogue.text_io import read_lines
from data_prep.kid.collection import Passage, add_collection_arguments, collection_from_args, collection_key
from data_prep.kid.dense_retriever import DenseEncoder, DenseRetriever
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
) -> list[list[tuple[str, float]]]:
    """Per context, ``[(passage id, score), ...]`` best first; ``[]`` for an empty context."""
    live = [i for i, c in enumerate(contexts) if c.strip()]
    results: list[list[tuple[str, float]]] = [[] for _ in contexts]
    if not live or k < 1:
        return results
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


def write_results(path: str | os.PathLike, results: Sequence[Sequence[tuple[str, float]]]) -> None:
    """The output JSONL (see the module docstring)."""
    with open(path, "w", encoding="utf-8") as f:
        for i, hits in enumerate(results):
            rec: dict[str, Any] = {
                "line": i,
                "passages": [{"id": pid, "score": round(score, 6)} for pid, score in hits],
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``kid-retrieve`` argument parser."""
    p = argparse.ArgumentParser(
        prog="kid-retrieve",
        description="Top-k passages of a collection for every line of a {split}.src file (KID step 1).",
    )
    p.add_argument("--input", required=True, help="contexts, one per line (a prepared {split}.src)")
    add_collection_arguments(p)
    p.add_argument("--output", required=True, help="retrieval JSONL")
    p.add_argument("--stats", help="stats JSON (default: <output>.stats.json)")
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
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: Optional[list[str]] = None) -> dict:
    """``kid-retrieve`` in-process; returns the stats it writes."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be >= 1")
    setup_logging(args.verbose)
    t0 = time.time()
    passages = collection_from_args(args)
    contexts = read_contexts(args.input, args.wordpiece)
    retriever = build_retriever(args, passages)
    t1 = time.time()
    results = retrieve(contexts, passages, retriever, args.top_k)
    t2 = time.time()
    write_results(args.output, results)
    stats: dict[str, Any] = {
        "input": args.input,
        "collection": args.collection,
        "collection_key": collection_key(passages),
        "passages": len(passages),
        "retriever": args.retriever,
        "top_k": args.top_k,
        "lines": len(contexts),
        "empty_contexts": sum(1 for c in contexts if not c.strip()),
        "empty_results": sum(1 for r in results if not r),
        "mean_hits": (sum(len(r) for r in results) / len(results)) if results else 0.0,
        "index_seconds": round(t1 - t0, 3),
        "search_seconds": round(t2 - t1, 3),
        "contexts_per_second": round(len(contexts) / max(t2 - t1, 1e-9), 1),
    }
    if isinstance(retriever, DenseRetriever):
        stats["model"] = retriever.encoder.model_path
        stats["device"] = retriever.encoder.device
        stats["passages_encoded"] = retriever.encoded
        if retriever.encoded:
            stats["passages_per_second"] = round(retriever.encoded / max(retriever.encode_seconds, 1e-9), 1)
    stats_path = args.stats or f"{args.output}.stats.json"
    with open(stats_path, "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2, sort_keys=True)
    logger.info("kid-retrieve: %s", json.dumps(stats, sort_keys=True))
    return stats


cli = console_script(main)  # the console script: exit status 0 on success, 2 on input errors

if __name__ == "__main__":
    main()
