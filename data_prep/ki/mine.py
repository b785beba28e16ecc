"""Mine token-level lexical knowledge for a tokenised dialogue corpus (KI paper §4.3, Eq. 5).

For every source line (whitespace tokens = the dialogue model's tokens) the tokens are grouped
into words (``informative_dialogue.ki.alignment_text.words_of``); the whole line is encoded by the retriever
(contextual), each word gets ``K = argmax_K f(h_word)ᵀ f(g(K))`` from the faiss index
(``data_prep.ki.index``), and every subword token of the word gets the word's item id. The
output line has exactly one id per source token (``0`` = no knowledge).

Rules (documented choices):

- **Skip tokens** (``--skip-tokens``, default ``__eou__`` and BERT/fairseq specials such as
  ``[SEP]``): markup, always 0, never searched, never part of an exact match.
- **Stopword masking** (§4.3; on by default, ``--no-stopword-masking`` is the paper's Table 9
  ablation): a word is a *stopword* when its lower-cased text is in spaCy's ``STOP_WORDS``, is
  a BERT contraction remnant (``s t m d ll re ve``), or has no letter or digit (punctuation,
  symbols). Masked words get 0 and are not searched.
- **Exact matching** (on by default): the line's lower-cased words are matched greedily left
  to right, longest n-gram first (n ≤ ``--max-title-words``), against the knowledge base's
  title index (``KnowledgeBase.title_index(sources)``, plus each title with punctuation split
  off and accents removed as BERT's basic tokenizer does, so ``"l. frank baum"`` matches
  ``l . frank ba ##um``). All words of a matched n-gram get the item's id, overriding
  retrieval. An n-gram made only of stopwords (title "The", "It", "!") never matches,
  whether or not masking is on; an n-gram containing a skip token never matches.
- **Dedup**: a line identical to one mined earlier in the shard (FIFO cache of
  ``--dedup-cache-size`` lines) or in the same chunk is not mined again; the hit rate is
  reported. On resume the cache is rebuilt from the written output, so a resumed shard writes
  exactly what an uninterrupted one writes.
- **Sharding** (like ``fairseq-preprocess --workers``): shard I of N is the contiguous line
  range ``[n·I//N, n·(I+1)//N)``. Output ``PREFIX.shard{I}of{N}.align``,
  ``PREFIX.shard{I}of{N}.progress.json`` (rewritten atomically after every flushed chunk of
  ``--chunk-lines`` lines: lines done, byte offset, counts) and, when the shard is complete,
  ``PREFIX.shard{I}of{N}.stats.json``. A rerun resumes at the recorded line, truncating any
  tail written after the recorded byte offset, and refuses to resume when the source file,
  the index (its meta.json) or any option differs. Sharded output equals unsharded output
  exactly for a batch-independent encoder; with BERT, padding in differently composed batches
  changes states by float rounding only. The resumable shard loop is
  :mod:`data_prep.shards`' (shared with ``kid-retrieve`` and ``kid-build-trie``); mining's
  counts and file names are in :mod:`data_prep.ki.shards`.

The word-level helpers of the first three rules (skip tokens, the stopword set, exact title
matching) live in :mod:`data_prep.ki.matching`.

The line-level engine (:class:`~data_prep.ki.miner.Miner`, :func:`~data_prep.ki.miner.mine_chunk`,
the dedup cache) lives in :mod:`data_prep.ki.miner`; this module drives it over a shard
(:func:`mine_shard`, resumable) and is the ``ki-mine`` command. Both take injected
``word_vectors_fn(sentences: list[list[str]]) -> (vectors float32 (total_words, d),
encoded bool (total_words,))`` and ``search_fn(queries float32 (n, d)) -> ids int64 (n,)``.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Callable, Sequence

import numpy as np

from informative_dialogue.ki.alignment_text import SUBWORD_FORMATS, format_alignment_line, read_text_lines
from informative_dialogue.cli import setup_logging, console_script
from data_prep.ki.matching import (
    DEFAULT_SKIP_TOKENS,
)
from data_prep.ki.miner import (  # the engine this module drives
    LineCache, Miner, MiningOptions, faiss_search_fn, mine_chunk,
)
from data_prep.ki.shards import COUNT_KEYS, new_counts, shard_paths, summarize
from data_prep.shards import run_shard, shard_range, source_fingerprint

logger = logging.getLogger(__name__)


def replay_cache(lines: Sequence[str], rows: Sequence[np.ndarray], cache: LineCache, chunk_lines: int) -> None:
    """Rebuild the dedup cache from already written output, in the same chunk order and
    insert order as :func:`mine_chunk` (for exact resumes)."""
    for s in range(0, len(lines), chunk_lines):
        pending: dict[str, np.ndarray] = {}
        for line, ids in zip(lines[s : s + chunk_lines], rows[s : s + chunk_lines]):
            if cache.get(line) is None and line not in pending:
                pending[line] = ids
        for line, ids in pending.items():
            cache.put(line, ids)


def mine_shard(
    source: str | os.PathLike,
    output_prefix: str,
    miner: Miner,
    index_fingerprint: dict,
    num_shards: int = 1,
    shard_id: int = 0,
    progress: bool = True,
    stop_after_chunks: int | None = None,
) -> dict:
    """Mine (or resume) one shard; returns the shard's stats (also written to its
    ``.stats.json`` when complete). The resumable chunk loop is
    :func:`data_prep.shards.run_shard`'s (shared with ``kid-retrieve`` and
    ``kid-build-trie``); on resume the dedup cache is rebuilt from the lines already written.
    ``stop_after_chunks`` (tests) returns after that many chunks without completing, as if
    killed."""
    source = os.fspath(source)
    options = miner.options
    lines = read_text_lines(source)
    start, _ = shard_range(len(lines), num_shards, shard_id)
    paths = shard_paths(output_prefix, num_shards, shard_id)
    files = {"data": paths["align"], "progress": paths["progress"], "stats": paths["stats"]}
    record = {"format": 1, "source": source_fingerprint(source, len(lines)), "index": index_fingerprint,
              "options": options.to_record()}
    cache = LineCache(options.dedup_cache_size)
    run_counts = new_counts()  # this process's counts (the progress file holds the shard's)
    clock = {"t0": time.perf_counter()}

    def prepare(lines_done: int) -> tuple[Callable[[int, int], tuple[list[str], dict]], dict]:
        if lines_done:  # rebuild the dedup cache from the written lines
            with open(files["data"], encoding="utf-8") as f:
                written = f.read().split("\n")[:lines_done]
            rows = [np.asarray([int(x) for x in w.split()], dtype=np.int64) for w in written]
            replay_cache(lines[start : start + lines_done], rows, cache, options.chunk_lines)
        miner.encode_s = miner.search_s = 0.0
        clock["t0"] = time.perf_counter()

        def process(a: int, b: int) -> tuple[list[str], dict]:
            before = dict(run_counts)
            ids = mine_chunk(lines[a:b], miner, cache, run_counts)
            return [format_alignment_line(r) for r in ids], {k: run_counts[k] - before[k] for k in COUNT_KEYS}

        return process, new_counts()

    def shard_stats(shard_counts: dict, state: dict) -> dict:
        counts = {k: shard_counts.get(k, 0) for k in COUNT_KEYS}
        elapsed = time.perf_counter() - clock["t0"]
        return {
            "shard_id": shard_id,
            "num_shards": num_shards,
            "lines": [state["start_line"], state["end_line"]],
            "counts": counts,
            **summarize(counts),
            "this_run": {
                "lines": run_counts["lines"],
                "tokens": run_counts["tokens"],
                "seconds": round(elapsed, 3),
                "tokens_per_s": run_counts["tokens"] / elapsed if elapsed > 0 else None,
                "lines_per_s": run_counts["lines"] / elapsed if elapsed > 0 else None,
                "encode_s": round(miner.encode_s, 3),
                "search_s": round(miner.search_s, 3),
                "other_s": round(elapsed - miner.encode_s - miner.search_s, 3),
            },
            "options": options.to_record(),
        }

    stats = run_shard(output_prefix, record, prepare, shard_stats, num_shards, shard_id, options.chunk_lines,
                      stop_after_chunks=stop_after_chunks, files=files, desc=f"mine shard {shard_id}/{num_shards}",
                      progress=progress)
    if "stopped_at_line" not in stats and stats["this_run"]["lines"]:
        run = stats["this_run"]
        logger.info(
            "shard %d/%d: %d lines, %d tokens in %.1fs (%.0f tokens/s, %.1f lines/s; encode %.1fs, search %.1fs); "
            "%.1f%% tokens with knowledge (%.1f%% of content tokens), dedup hit rate %.1f%%",
            shard_id, num_shards, run["lines"], run["tokens"], run["seconds"], run["tokens_per_s"] or 0.0,
            run["lines_per_s"] or 0.0, run["encode_s"], run["search_s"], 100 * stats["share_tokens_with_knowledge"],
            100 * stats["share_content_tokens_with_knowledge"], 100 * stats["dedup_hit_rate"],
        )
    return stats


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ki-mine",
        description="Mine token-level knowledge ids (one per source token, 0 = none) with a trained retriever and a "
        "ki-encode-knowledge index; resumable, shardable.",
    )
    p.add_argument("--source", required=True, help="tokenised source file (one dialogue context per line)")
    p.add_argument("--index", required=True, help="index directory from ki-encode-knowledge")
    p.add_argument("--knowledge-base", required=True, help="knowledge base directory (titles for exact matching; must be the indexed one)")
    p.add_argument("--retriever", required=True, help="retriever directory (must be the one the index was built with)")
    p.add_argument("--output", required=True, help="output prefix: writes PREFIX.shard{I}of{N}.align/.progress.json/.stats.json")
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--shard-id", type=int, default=0)
    p.add_argument("--subword-format", choices=SUBWORD_FORMATS, default="wordpiece")
    p.add_argument("--no-stopword-masking", action="store_true", help="search stopwords and punctuation too (Table 9 ablation)")
    p.add_argument("--no-exact-match", action="store_true", help="do not match titles exactly (Table 9 ablation)")
    p.add_argument("--exact-match-sources", nargs="+", default=["wikipedia"], help="knowledge-base sources whose titles are matched")
    p.add_argument("--max-title-words", type=int, default=4)
    p.add_argument("--skip-tokens", default=" ".join(DEFAULT_SKIP_TOKENS), help="space-separated markup tokens never aligned")
    p.add_argument("--batch-size", type=int, default=64, help="lines per encoder batch")
    p.add_argument("--chunk-lines", type=int, default=2000, help="lines per flushed chunk (resume granularity)")
    p.add_argument("--max-length", type=int, default=128, help="encoder truncation (WordPieces); cut words get 0 and are counted")
    p.add_argument("--dedup-cache-size", type=int, default=200_000, help="lines remembered for dedup (0 = within a chunk only)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (IVF indexes only)")
    p.add_argument("--gpu", choices=("auto", "no"), default="auto", help="faiss GPU search")
    p.add_argument(
        "--int8-encoder",
        action="store_true",
        help="CPU speed-up: dynamic int8 quantization of the token encoder's Linear layers (approximate; "
        "the index is unchanged)",
    )
    p.add_argument("--device", default="auto", help="torch device for the retriever (auto = cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch/faiss CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def quantize_token_encoder(retriever) -> None:
    """Replace ``retriever.token_encoder`` by its dynamically int8-quantized copy (CPU only)."""
    import torch

    if retriever.device.type != "cpu":
        raise ValueError("--int8-encoder is a CPU option (dynamic quantization); use --device cpu")
    retriever.token_encoder = torch.ao.quantization.quantize_dynamic(retriever.token_encoder, {torch.nn.Linear}, dtype=torch.qint8)
    logger.info("token encoder quantized to int8 (dynamic, Linear layers)")


def options_from_args(args: argparse.Namespace) -> MiningOptions:
    return MiningOptions(
        subword_format=args.subword_format,
        stopword_masking=not args.no_stopword_masking,
        exact_match=not args.no_exact_match,
        exact_match_sources=tuple(args.exact_match_sources),
        max_title_words=args.max_title_words,
        skip_tokens=tuple(args.skip_tokens.split()),
        batch_size=args.batch_size,
        chunk_lines=args.chunk_lines,
        max_length=args.max_length,
        dedup_cache_size=args.dedup_cache_size,
        nprobe=args.nprobe,
        int8_encoder=args.int8_encoder,
    )


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from data_prep.ki import index as ki_index

    ki_index.set_threads(args.threads)
    options = options_from_args(args)
    from data_prep.ki.knowledge_base import load_knowledge_base
    from data_prep.ki.retriever import TokenKnowledgeRetriever

    meta = ki_index.read_meta(args.index)
    kb = load_knowledge_base(args.knowledge_base)
    ki_index.check_index_matches(
        meta, kb_fp=ki_index.kb_fingerprint(args.knowledge_base), retriever_fp=ki_index.dir_fingerprint(args.retriever), n_items=len(kb)
    )
    index, meta = ki_index.load_index(args.index, gpu=args.gpu, nprobe=args.nprobe)
    retriever = TokenKnowledgeRetriever.load(args.retriever, device=ki_index.resolve_device(args.device))
    if options.int8_encoder:
        quantize_token_encoder(retriever)
    if retriever.projection_dim != meta["projection_dim"]:
        raise ValueError(f"retriever projection_dim {retriever.projection_dim} != index {meta['projection_dim']}")
    title_index = kb.title_index(sources=tuple(args.exact_match_sources)) if options.exact_match else {}
    logger.info("%d titles for exact matching from sources %s", len(title_index), args.exact_match_sources)

    def word_vectors_fn(sentences: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        return retriever.encode_words(sentences, max_length=options.max_length, batch_size=options.batch_size)

    miner = Miner(word_vectors_fn, faiss_search_fn(index), options, title_index=title_index)
    index_fp = {"path": os.path.abspath(args.index), "meta_sha256": ki_index.meta_sha256(args.index)}
    return mine_shard(args.source, args.output, miner, index_fp, args.num_shards, args.shard_id, progress=not args.no_progress)


cli = console_script(main)  # the console script: exit status 0 on success

if __name__ == "__main__":
    main()
