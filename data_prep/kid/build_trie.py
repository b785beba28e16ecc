"""``kid-build-trie``: retrieved passages -> triples -> one knowledge trie per example -- step 2
of knowledge-infused decoding (KID, paper section 3.2 / appendix A.2.1), run offline.

Inputs: the retrieval JSONL of ``kid-retrieve`` (``{"line": i, "passages": [{"id", "score"}]}``
per example), the same passage collection, and (``--source``, recommended) the ``{split}.src``
file whose contexts give each example's initial entities.

For every example ``i``:

1. the (first ``--top-k``, default all) retrieved passages are turned into
   ``(subj, rel, obj)`` triples by :func:`data_prep.kid.triples.extract_triples` (spaCy
   dependency rules + pronoun resolution). Each distinct passage is parsed once, however many
   examples retrieved it (``--triples-cache FILE.jsonl`` keeps the triples across runs,
   keyed by passage id and a hash of its text);
2. the union of the triples becomes :meth:`KnowledgeTrie.from_triples` (keys: Porter stems of
   the subjects' content words; values: object phrases; links and depths derived);
3. ``entities`` = the named entities and noun-chunk heads of the context (``--source`` line
   ``i``; ``--wordpiece`` joins ``##`` pieces first, ``__word__`` separators are dropped),
   lower-cased, stop words and word-less tokens removed, ordered by their last mention
   (oldest first, as the decoder's FIFO memory G_loc expects), duplicates removed. Without
   ``--source`` the field is ``null`` and the decoder reads the entities from the source
   text itself.

Output: line ``i`` = example ``i`` of the input (the decoder relies on it), in the format of
:mod:`informative_dialogue.kid.trie_files` (``{"id", "entities", "trie", "surface"}``).
An example with no retrieved passage or no triple gets an empty trie (``"trie": {}``); both
cases are counted in the stats. Sizes (keys, values, links, depths, bytes) are logged and
written to ``--stats`` (default ``<output>.stats.json``).

Sharding and resuming (:mod:`data_prep.shards`, the conventions of ``ki-mine``):
``--num-shards N --shard-id I`` builds the tries of the contiguous line range
``[n·I//N, n·(I+1)//N)`` of ``--retrieval`` into ``OUT.shard{I}of{N}.jsonl`` (``"id"`` = the
example's line in the whole input) with ``OUT.shard{I}of{N}.progress.json`` rewritten after
every ``--chunk-lines`` examples (default 2000) and ``OUT.shard{I}of{N}.stats.json`` when done;
a rerun resumes where a killed run stopped, skips a complete shard without loading spaCy, and
refuses (naming the progress file) a shard recorded with another retrieval file, collection,
``--source`` content or option. ``kid-merge-shards --output OUT --num-shards N`` joins complete
shards into ``OUT`` and ``OUT.stats.json``; with the default ``--num-shards 1`` the one shard
becomes ``OUT`` by itself. The shards concatenated equal the unsharded output byte for byte,
and the merged stats equal the unsharded ones (up to float rounding of the means; timings and
``passages_parsed``, the work done, aside): the progress file keeps each distinct passage's
triple count, so it grows with the passages a shard retrieves. Shards running at the same
time may share one ``--triples-cache`` (appends are locked, :mod:`data_prep.kid.triples_cache`);
a passage parsed by two shards before either cached it is parsed twice.

The trie module is loaded from its file, without importing the ``fairseq_plugins`` package
(whose ``__init__`` imports fairseq), unless that package is already imported.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from types import ModuleType
from typing import Any, Mapping, Optional, Sequence

from tqdm import tqdm

from informative_dialogue import text_io
from informative_dialogue.errors import CorpusError
from informative_dialogue.cli import console_script, setup_logging
from data_prep.kid.collection import Passage, add_collection_arguments, collection_from_args, collection_key, index_by_id
from data_prep.kid.retrieve import read_contexts
from data_prep.shards import (add_shard_arguments, check_shard_flags, merge_shards, new_record, run_shard,
                               source_fingerprint)
from data_prep.kid.triples import DEFAULT_SPACY_MODEL, Triple, load_spacy
from data_prep.kid.triples_cache import load_triples_cache, parse_missing, passage_triples  # noqa: F401 (passage_triples: API)
from informative_dialogue.stop_words import english_stop_words

logger = logging.getLogger(__name__)

def knowledge_trie_module() -> ModuleType:
    """:mod:`informative_dialogue.kid.trie` (fairseq-free; the decoder imports the same module)."""
    from informative_dialogue.kid import trie as knowledge_trie

    return knowledge_trie


# --------------------------------------------------------------------------------------------
# inputs


def read_retrieval(path: str | os.PathLike, passages: dict[str, Passage], top_k: int = 0) -> list[list[str]]:
    """Passage ids per example from a ``kid-retrieve`` JSONL (first ``top_k`` if > 0).

    CorpusError (file + line) on invalid JSON, a ``line`` field out of step with the line
    number, a passage id that is not in the collection, a lone ``\\r`` or non-UTF-8 bytes.
    """
    path = os.fspath(path)
    out: list[list[str]] = []
    for n, raw in enumerate(text_io.iter_lines(path)):  # split on \n only: line i = example i
        line_no = n + 1
        if not raw.strip():
            raise CorpusError(path, "empty line (one JSON object per example)", line_no)
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CorpusError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", line_no) from exc
        if not isinstance(rec, dict) or not isinstance(rec.get("passages"), list):
            raise CorpusError(path, "expected {\"line\": i, \"passages\": [{\"id\", \"score\"}, ...]}", line_no)
        if rec.get("line", n) != n:
            raise CorpusError(path, f"'line' is {rec.get('line')!r}, expected {n} (the 0-based line number)", line_no)
        ids = []
        for hit in rec["passages"]:
            pid = hit.get("id") if isinstance(hit, dict) else None
            if pid is None:
                raise CorpusError(path, "every passage needs an 'id'", line_no)
            pid = str(pid)
            if pid not in passages:
                raise CorpusError(path, f"passage id {pid!r} is not in the collection", line_no)
            ids.append(pid)
        out.append(ids[:top_k] if top_k > 0 else ids)
    return out


# --------------------------------------------------------------------------------------------
# entities of the contexts


def context_entities(doc: Any, stop_words: frozenset) -> list[str]:
    """Initial G_loc entities of one parsed context: named entities and noun-chunk heads,
    lower-cased, stop words / word-less tokens removed, ordered by last mention (oldest
    first), distinct.

    Args:
        doc: a spaCy ``Doc`` (parser + NER).
    """

    def clean(tokens: Sequence[Any]) -> str:
        words = [t.lower_ for t in tokens if t.lower_ not in stop_words and any(c.isalpha() for c in t.lower_)]
        return " ".join(words)

    mentions: list[tuple[int, str]] = []  # (position of the mention's last token, text)
    covered: set[int] = set()
    for ent in doc.ents:
        text = clean(ent)
        if text:
            mentions.append((ent.end - 1, text))
            covered.update(range(ent.start, ent.end))
    for chunk in doc.noun_chunks:
        head = chunk.root
        if head.i in covered:
            continue
        text = clean([head])
        if text:
            mentions.append((head.i, text))
    last: dict[str, int] = {}
    for pos, text in mentions:
        last[text] = max(pos, last.get(text, -1))
    return [t for t, _ in sorted(last.items(), key=lambda kv: kv[1])]


def entities_batch(contexts: Sequence[str], nlp: Any, batch_size: int = 64) -> list[list[str]]:
    """:func:`context_entities` of every context (``[]`` for an empty one)."""
    stop = english_stop_words()
    docs = nlp.pipe(contexts, batch_size=batch_size)
    return [context_entities(d, stop) for d in tqdm(docs, total=len(contexts), desc="context entities", unit="ctx")]


# --------------------------------------------------------------------------------------------
# driver


def build_tries(
    retrieved: Sequence[Sequence[str]],
    triples: dict[str, list[Triple]],
    normalizer: Any,
    trie_module: Optional[ModuleType] = None,
) -> list[Any]:
    """One ``KnowledgeTrie`` per example from the union of its passages' triples."""
    kt = trie_module or knowledge_trie_module()
    return [
        kt.KnowledgeTrie.from_triples([t for pid in ids for t in triples[pid]], normalizer)
        for ids in tqdm(retrieved, desc="build tries", unit="ex")
    ]


def build_parser() -> argparse.ArgumentParser:
    """The ``kid-build-trie`` argument parser."""
    p = argparse.ArgumentParser(
        prog="kid-build-trie",
        description="Retrieval JSONL + collection -> one knowledge trie per example (KID step 2).",
    )
    p.add_argument("--retrieval", required=True, help="JSONL written by kid-retrieve")
    add_collection_arguments(p)  # the same collection flags as given to kid-retrieve
    p.add_argument("--source", help="{split}.src whose lines give the initial entities (same line count)")
    p.add_argument("--wordpiece", action="store_true", help="join '##' continuations of --source first")
    p.add_argument("--output", required=True, help="trie JSONL (one line per example)")
    p.add_argument("--stats", help="stats JSON (default: <output>.stats.json; only with --num-shards 1)")
    p.add_argument("-k", "--top-k", type=int, default=0, help="use the first k retrieved passages (0 = all)")
    p.add_argument("--spacy-model", default=DEFAULT_SPACY_MODEL)
    p.add_argument("--batch-size", type=int, default=32, help="spaCy nlp.pipe batch size")
    p.add_argument("--triples-cache", help="JSONL cache of per-passage triples, reused across runs (shards may share it)")
    add_shard_arguments(p)
    p.add_argument("--verbose", action="store_true")
    return p


def trie_line(example: int, trie: Any, entities: Optional[Sequence[str]]) -> str:
    """One output line (no newline), as :func:`informative_dialogue.kid.trie_files.save_jsonl`
    writes it for example ``example``."""
    rec: dict[str, Any] = {"id": example, "entities": list(entities) if entities is not None else None}
    rec.update(trie.to_json())
    return json.dumps(rec, ensure_ascii=False)


def chunk_counts(
    retrieved: Sequence[Sequence[str]], tries: Sequence[Any], entities: Sequence[Optional[list[str]]],
    triples: Mapping[str, list[Triple]], lines: Sequence[str],
) -> dict:
    """Counts of a chunk of examples (combined by :func:`data_prep.shards.merge_counts`)."""
    per = [t.stats() for t in tries]
    return {
        "examples": len(tries),
        "no_passages": sum(1 for ids in retrieved if not ids),
        "no_triples": sum(1 for ids in retrieved if ids and not any(triples[p] for p in ids)),
        "empty_tries": sum(1 for t in tries if t.is_empty()),
        "passage_triples": {p: len(triples[p]) for ids in retrieved for p in ids},
        "keys_total": sum(p["keys"] for p in per),
        "max_keys": max((p["keys"] for p in per), default=0),
        "values_total": sum(p["values"] for p in per),
        "value_words_total": sum(p["value_words"] for p in per),
        "links_total": sum(p["links"] for p in per),
        "max_depth": max((p["max_depth"] for p in per), default=0),
        "depth_sum": sum(p["mean_depth"] for p in per),
        "entities_total": sum(len(e) for e in entities if e is not None),
        "bytes": sum(len(line.encode("utf-8")) + 1 for line in lines),
    }


def trie_stats(counts: Mapping[str, Any], record: Mapping[str, Any]) -> dict:
    """The stats of a shard or of the merged output from its combined counts."""
    n = counts.get("examples", 0)
    nz = max(n, 1)
    pt = counts.get("passage_triples", {})
    return {
        "retrieval": record["source"]["path"],
        "collection": record["collection"]["path"],
        "examples": n,
        "no_passages": counts.get("no_passages", 0),
        "no_triples": counts.get("no_triples", 0),
        "empty_tries": counts.get("empty_tries", 0),
        "distinct_passages": len(pt),
        "passages_parsed": counts.get("passages_parsed", 0),
        "passage_triples_mean": sum(pt.values()) / max(len(pt), 1),
        "keys_total": counts.get("keys_total", 0),
        "keys_mean": counts.get("keys_total", 0) / nz,
        "keys_max": counts.get("max_keys", 0),
        "values_mean": counts.get("values_total", 0) / nz,
        "value_words_mean": counts.get("value_words_total", 0) / nz,
        "links_total": counts.get("links_total", 0),
        "links_mean": counts.get("links_total", 0) / nz,
        "max_depth": counts.get("max_depth", 0),
        "mean_depth": counts.get("depth_sum", 0.0) / nz,
        "entities_mean": counts.get("entities_total", 0) / n if record["options"]["contexts"] and n else None,
        "bytes": counts.get("bytes", 0),
        "parse_seconds": round(counts.get("parse_seconds", 0.0), 3),
        "total_seconds": round(record.get("elapsed_s", 0.0), 3),
    }


def main(argv: Optional[list[str]] = None, nlp: Any = None, stop_after_chunks: Optional[int] = None) -> dict:
    """``kid-build-trie`` in-process; returns the stats it writes (of the shard when
    ``--num-shards`` > 1). ``nlp``: an already loaded spaCy pipeline (tests, notebooks) instead
    of ``--spacy-model``; ``stop_after_chunks`` (tests): stop as if killed."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    check_shard_flags(args.num_shards, args.shard_id, args.chunk_lines)
    if args.stats and args.num_shards > 1:
        raise ValueError("--stats names the merged stats: pass it to kid-merge-shards, not to a shard (--num-shards > 1)")
    collection = collection_from_args(args)
    passages = index_by_id(collection)
    retrieved = read_retrieval(args.retrieval, passages, args.top_k)
    contexts: Optional[list[str]] = None
    if args.source:
        contexts = read_contexts(args.source, args.wordpiece)
        if len(contexts) != len(retrieved):
            raise CorpusError(
                args.retrieval,
                f"{len(retrieved)} lines, but {args.source} has {len(contexts)}: the retrieval must come from that file",
            )
    options = {
        "top_k": args.top_k, "wordpiece": args.wordpiece, "spacy_model": args.spacy_model, "batch_size": args.batch_size,
        "chunk_lines": args.chunk_lines, "collection_key": collection_key(collection),
        "contexts": source_fingerprint(args.source, len(contexts))["sha256"] if contexts is not None else None,
    }
    record = new_record("kid-build-trie", args.retrieval, len(retrieved), options,
                        collection={"path": os.path.abspath(args.collection), "passages": len(collection)})

    def prepare(lines_done: int) -> tuple[Any, dict]:  # nothing to rebuild on resume
        model = nlp if nlp is not None else load_spacy(args.spacy_model)
        kt = knowledge_trie_module()
        normalizer = kt.WordNormalizer()
        known = load_triples_cache(args.triples_cache, passages) if args.triples_cache else {}
        if args.triples_cache:
            logger.info("triples cache %s: %d passages of the collection", args.triples_cache, len(known))

        def process(start: int, end: int) -> tuple[list[str], dict]:
            t0 = time.time()
            chunk = retrieved[start:end]
            parsed = parse_missing([p for ids in chunk for p in ids], passages, model, known, args.triples_cache, args.batch_size)
            t_parse = time.time() - t0
            tries = build_tries(chunk, known, normalizer, kt)
            entities = entities_batch(contexts[start:end], model) if contexts is not None else [None] * (end - start)
            lines = [trie_line(start + j, t, e) for j, (t, e) in enumerate(zip(tries, entities))]
            counts = chunk_counts(chunk, tries, entities, known, lines)
            counts.update(passages_parsed=parsed, parse_seconds=t_parse)
            return lines, counts

        return process, {}

    stats = run_shard(args.output, record, prepare, trie_stats, args.num_shards, args.shard_id, args.chunk_lines,
                      stop_after_chunks=stop_after_chunks)
    if "stopped_at_line" in stats:
        return stats
    if args.num_shards == 1:
        stats = merge_shards(args.output, 1, trie_stats, "id", stats_path=args.stats, input_path=args.retrieval, remove_shards=True)
    logger.info(
        "kid-build-trie: %d examples (%d empty tries: %d without passages, %d without triples), "
        "keys %.1f/example (max %d), %d links, max depth %d, %d bytes -> %s",
        stats["examples"], stats["empty_tries"], stats["no_passages"], stats["no_triples"],
        stats["keys_mean"], stats["keys_max"], stats["links_total"], stats["max_depth"], stats["bytes"], args.output,
    )
    return stats


cli = console_script(main)  # the console script: exit status 0 on success, 2 on input errors

if __name__ == "__main__":
    main()
