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

The trie module is loaded from its file, without importing the ``fairseq_plugins`` package
(whose ``__init__`` imports fairseq), unless that package is already imported.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from types import ModuleType
from typing import Any, Optional, Sequence

from tqdm import tqdm

from informative_dialogue import text_io
from informative_dialogue.errors import CorpusError
from informative_dialogue.cli import console_script, setup_logging
from informative_dialogue.text_io import OutputSet
from data_prep.kid.collection import Passage, add_collection_arguments, collection_from_args, index_by_id
from data_prep.kid.retrieve import read_contexts
from data_prep.kid.triples import DEFAULT_SPACY_MODEL, Triple, extract_triples_batch, load_spacy
from informative_dialogue.stop_words import english_stop_words
from informative_dialogue.kid.trie_files import save_jsonl

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
# triples per passage, with an optional on-disk cache


def _text_hash(p: Passage) -> str:
    return hashlib.sha1(p.text.encode("utf-8")).hexdigest()[:16]


def passage_triples(
    ids: Sequence[str],
    passages: dict[str, Passage],
    nlp: Any,
    cache_path: Optional[str] = None,
    batch_size: int = 32,
) -> tuple[dict[str, list[Triple]], int]:
    """Triples of each distinct passage in ``ids``, each parsed at most once.

    Returns ``(id -> triples, number of passages parsed in this call)``; with ``cache_path``
    earlier results (same id and text hash) are reused and new ones appended.
    """
    wanted = list(dict.fromkeys(ids))
    triples: dict[str, list[Triple]] = {}
    if cache_path and os.path.exists(cache_path):
        for line_no, raw in enumerate(text_io.iter_lines(cache_path), 1):
            try:
                rec = json.loads(raw)
                pid, h, trs = rec["id"], rec["hash"], rec["triples"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CorpusError(cache_path, f"bad triples-cache line ({exc}); delete the file", line_no) from exc
            p = passages.get(pid)
            if p is not None and _text_hash(p) == h:
                triples[pid] = [tuple(t) for t in trs]  # type: ignore[misc]
        logger.info("triples cache %s: %d of %d passages found", cache_path, sum(p in triples for p in wanted), len(wanted))
    todo = [pid for pid in wanted if pid not in triples]
    if todo:
        parsed = extract_triples_batch([passages[p].text for p in todo], nlp, batch_size=batch_size, desc="parse passages")
        for pid, trs in zip(todo, parsed):
            triples[pid] = trs
        if cache_path:
            with open(cache_path, "a", encoding="utf-8") as f:
                for pid, trs in zip(todo, parsed):
                    f.write(json.dumps({"id": pid, "hash": _text_hash(passages[pid]), "triples": trs}, ensure_ascii=False) + "\n")
    return triples, len(todo)


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
    p.add_argument("--stats", help="stats JSON (default: <output>.stats.json)")
    p.add_argument("-k", "--top-k", type=int, default=0, help="use the first k retrieved passages (0 = all)")
    p.add_argument("--spacy-model", default=DEFAULT_SPACY_MODEL)
    p.add_argument("--batch-size", type=int, default=32, help="spaCy nlp.pipe batch size")
    p.add_argument("--triples-cache", help="JSONL cache of per-passage triples, reused across runs")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: Optional[list[str]] = None, nlp: Any = None) -> dict:
    """``kid-build-trie`` in-process; returns the stats it writes. ``nlp``: an already loaded
    spaCy pipeline (tests, notebooks) instead of ``--spacy-model``."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    t0 = time.time()
    passages = index_by_id(collection_from_args(args))
    retrieved = read_retrieval(args.retrieval, passages, args.top_k)
    contexts: Optional[list[str]] = None
    if args.source:
        contexts = read_contexts(args.source, args.wordpiece)
        if len(contexts) != len(retrieved):
            raise CorpusError(
                args.retrieval,
                f"{len(retrieved)} lines, but {args.source} has {len(contexts)}: the retrieval must come from that file",
            )
    if nlp is None:
        nlp = load_spacy(args.spacy_model)
    kt = knowledge_trie_module()
    normalizer = kt.WordNormalizer()
    all_ids = [pid for ids in retrieved for pid in ids]
    triples, parsed = passage_triples(all_ids, passages, nlp, args.triples_cache, args.batch_size)
    t_parse = time.time()
    tries = build_tries(retrieved, triples, normalizer, kt)
    entities: list[Optional[list[str]]] = [None] * len(tries)
    if contexts is not None:
        entities = list(entities_batch(contexts, nlp))
    with OutputSet() as outputs:  # the trie file and its stats move into place together, or neither
        size = save_jsonl(outputs.path(args.output), list(zip(tries, entities)))
        per = [t.stats() for t in tries]
        stats: dict[str, Any] = {
            "retrieval": args.retrieval,
            "collection": args.collection,
            "examples": len(tries),
            "no_passages": sum(1 for ids in retrieved if not ids),
            "no_triples": sum(1 for ids in retrieved if ids and not any(triples[p] for p in ids)),
            "empty_tries": sum(1 for t in tries if t.is_empty()),
            "distinct_passages": len(set(all_ids)),
            "passages_parsed": parsed,
            "passage_triples_mean": (sum(len(triples[p]) for p in set(all_ids)) / max(len(set(all_ids)), 1)),
            "keys_total": size["keys_total"],
            "keys_mean": size["keys_mean"],
            "keys_max": max((p["keys"] for p in per), default=0),
            "values_mean": sum(p["values"] for p in per) / max(len(per), 1),
            "value_words_mean": size["value_words_mean"],
            "links_total": sum(p["links"] for p in per),
            "links_mean": sum(p["links"] for p in per) / max(len(per), 1),
            "max_depth": size["max_depth"],
            "mean_depth": sum(p["mean_depth"] for p in per) / max(len(per), 1),
            "entities_mean": (sum(len(e) for e in entities if e is not None) / len(entities)) if contexts else None,
            "bytes": size["bytes"],
            "parse_seconds": round(t_parse - t0, 3),
            "total_seconds": round(time.time() - t0, 3),
        }
        stats_path = args.stats or f"{args.output}.stats.json"
        with open(outputs.path(stats_path), "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=2, sort_keys=True)
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
