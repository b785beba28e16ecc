"""The line-level engine of ``ki-mine``: a line's words and what to do with each
(:class:`LinePlan`), the batched encode-and-search of a chunk of lines (:class:`Miner`,
:func:`mine_chunk`), the dedup cache (:class:`LineCache`) and the output's token counts
(:func:`count_line`). The rules (skip tokens, stopword masking, exact matching, dedup) are
documented in :mod:`data_prep.ki.mine`, which drives this engine over a shard and resumes it.

The engine takes injected ``word_vectors_fn(sentences: list[list[str]]) -> (vectors float32
(total_words, d), encoded bool (total_words,))`` and ``search_fn(queries float32 (n, d)) ->
ids int64 (n,)``.
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from informative_dialogue.ki.alignment_text import SUBWORD_FORMATS, words_of
from data_prep.ki.matching import DEFAULT_SKIP_TOKENS, build_title_matcher, default_stopwords, exact_match_ids
from informative_dialogue.stop_words import is_stopword

# per-word kinds
SKIP, MASKED, EXACT, SEARCH, OPEN = 1, 2, 3, 4, 5  # OPEN: stopword left unmasked (--no-stopword-masking) -> searched

WordVectorsFn = Callable[[list[list[str]]], "tuple[np.ndarray, np.ndarray]"]
SearchFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class MiningOptions:
    """Everything that decides the output (recorded in the progress file; a resume with any
    difference is refused)."""

    subword_format: str = "wordpiece"
    stopword_masking: bool = True
    exact_match: bool = True
    exact_match_sources: tuple[str, ...] = ("wikipedia",)
    max_title_words: int = 4
    skip_tokens: tuple[str, ...] = DEFAULT_SKIP_TOKENS
    batch_size: int = 64
    chunk_lines: int = 2000
    max_length: int = 128
    dedup_cache_size: int = 200_000
    nprobe: int | None = None
    int8_encoder: bool = False

    def __post_init__(self) -> None:
        if self.subword_format not in SUBWORD_FORMATS:
            raise ValueError(f"subword format must be one of {SUBWORD_FORMATS}, got {self.subword_format!r}")
        for name in ("max_title_words", "batch_size", "chunk_lines", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dedup_cache_size < 0:
            raise ValueError("dedup_cache_size must be >= 0")

    def to_record(self) -> dict:
        """JSON-normalised dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


@dataclass
class LinePlan:
    """A line's words and what to do with each: ``kind`` uint8 ``(W,)`` (SKIP, MASKED, EXACT,
    SEARCH, OPEN), ``exact`` int64 ``(W,)`` exact-match ids, ``stop`` bool ``(W,)`` (stopword
    rule, regardless of masking), ``spans`` token ranges of the words."""

    n_tokens: int
    words: list[str]
    spans: list[tuple[int, int]]
    kind: np.ndarray
    exact: np.ndarray
    stop: np.ndarray

    @property
    def searched(self) -> np.ndarray:
        """bool ``(W,)``: words that go to the index."""
        return (self.kind == SEARCH) | (self.kind == OPEN)


class LineCache:
    """FIFO cache ``line -> ids`` of at most ``size`` lines (0 = off). Lookups do not reorder,
    so replaying the same sequence of inserts rebuilds the same state."""

    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, line: str) -> np.ndarray | None:
        return self._d.get(line)

    def put(self, line: str, ids: np.ndarray) -> None:
        if self.size == 0 or line in self._d:
            return
        self._d[line] = ids
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)


def faiss_search_fn(index, batch: int = 8192) -> SearchFn:
    """``search_fn`` over a faiss index: top-1 id per query row (float32 ``(n, d)``), int64
    ``(n,)``; faiss's ``-1`` (nothing found, e.g. empty IVF probes) becomes 0."""

    def search(queries: np.ndarray) -> np.ndarray:
        out = np.zeros(len(queries), dtype=np.int64)
        for s in range(0, len(queries), batch):
            _, ids = index.search(np.ascontiguousarray(queries[s : s + batch], dtype=np.float32), 1)
            out[s : s + batch] = np.maximum(ids[:, 0], 0)
        return out

    return search


class Miner:
    """Mines one chunk of lines at a time (see the module docstring for the rules)."""

    def __init__(
        self,
        word_vectors_fn: WordVectorsFn,
        search_fn: SearchFn,
        options: MiningOptions,
        title_index: Mapping[str, int] | None = None,
        stopwords: frozenset[str] | None = None,
    ):
        self.word_vectors_fn = word_vectors_fn
        self.search_fn = search_fn
        self.options = options
        self.stopwords = default_stopwords() if stopwords is None else stopwords
        self.skip_tokens = frozenset(options.skip_tokens)
        self.matcher = build_title_matcher(title_index or {}, options.max_title_words) if options.exact_match else {}
        self.encode_s = 0.0
        self.search_s = 0.0

    def plan(self, line: str) -> LinePlan:
        """Group a line into words and decide each word's kind (no encoder call)."""
        tokens = line.split()
        words, spans = words_of(tokens, self.options.subword_format)
        skip = [w in self.skip_tokens for w in words]
        stop = [is_stopword(w, self.stopwords) for w in words]
        kind = np.full(len(words), SEARCH, dtype=np.uint8)
        for j, (sk, st) in enumerate(zip(skip, stop)):
            if sk:
                kind[j] = SKIP
            elif st:
                kind[j] = MASKED if self.options.stopword_masking else OPEN
        if self.matcher:
            exact = exact_match_ids([w.lower() for w in words], self.matcher, self.options.max_title_words, stop, skip)
            kind[exact > 0] = EXACT
        else:
            exact = np.zeros(len(words), dtype=np.int64)
        return LinePlan(len(tokens), words, spans, kind, exact, np.asarray(stop, dtype=bool))

    def mine_plans(self, plans: Sequence[LinePlan], counts: dict[str, int]) -> list[np.ndarray]:
        """Word ids int64 ``(W,)`` per plan: exact ids, retrieved ids for searched words, 0 else.
        Lines are encoded in batches of ``batch_size`` sorted by word count."""
        word_ids = [p.exact.copy() for p in plans]
        todo = [i for i, p in enumerate(plans) if p.searched.any()]
        todo.sort(key=lambda i: (-len(plans[i].words), i))
        counts["lines_encoded"] += len(todo)
        queries: list[np.ndarray] = []
        targets: list[tuple[int, np.ndarray]] = []
        bs = self.options.batch_size
        t0 = time.perf_counter()
        for b in range(0, len(todo), bs):
            batch = todo[b : b + bs]
            sentences = [list(plans[i].words) for i in batch]
            vectors, encoded = self.word_vectors_fn(sentences)
            total = sum(len(s) for s in sentences)
            if len(vectors) != total or len(encoded) != total:
                raise ValueError(f"word encoder returned {len(vectors)} vectors / {len(encoded)} flags for {total} words")
            offset = 0
            for i, sent in zip(batch, sentences):
                rows = slice(offset, offset + len(sent))
                want = plans[i].searched
                ok = want & np.asarray(encoded[rows], dtype=bool)
                counts["words_searched"] += int(ok.sum())
                counts["words_truncated"] += int((want & ~ok).sum())
                if ok.any():
                    queries.append(np.asarray(vectors[rows], dtype=np.float32)[ok])
                    targets.append((i, np.flatnonzero(ok)))
                offset += len(sent)
        t1 = time.perf_counter()
        self.encode_s += t1 - t0
        if queries:
            found = self.search_fn(np.concatenate(queries))
            pos = 0
            for i, where in targets:
                word_ids[i][where] = found[pos : pos + len(where)]
                pos += len(where)
        self.search_s += time.perf_counter() - t1
        return word_ids


def token_ids(plan: LinePlan, word_ids: np.ndarray) -> np.ndarray:
    """Spread word ids over their subword tokens: int64 ``(n_tokens,)``."""
    out = np.zeros(plan.n_tokens, dtype=np.int64)
    for (s, e), wid in zip(plan.spans, word_ids):
        out[s:e] = wid
    return out


def count_line(plan: LinePlan, ids: np.ndarray, counts: dict[str, int]) -> None:
    """Add one output line's token categories to ``counts`` (derivable from plan + ids, so
    identical for mined, cached and replayed lines)."""
    counts["lines"] += 1
    counts["tokens"] += plan.n_tokens
    counts["words"] += len(plan.words)
    has = int((ids > 0).sum())
    counts["tokens_with_knowledge"] += has
    counts["lines_with_knowledge"] += int(has > 0)
    for (s, e), kind, st in zip(plan.spans, plan.kind, plan.stop):
        n = e - s
        if kind == SKIP:
            counts["tokens_skip"] += n
        else:
            counts["tokens_stopword_rule"] += n * int(st)
            counts["tokens_content_with_knowledge"] += n * int(not st and ids[s] > 0)
            if kind == MASKED:
                counts["tokens_masked"] += n
            elif kind == EXACT:
                counts["tokens_exact"] += n
            elif ids[s] > 0:
                counts["tokens_retrieved"] += n
            else:
                counts["tokens_unresolved"] += n


def mine_chunk(lines: Sequence[str], miner: Miner, cache: LineCache, counts: dict[str, int]) -> list[np.ndarray]:
    """Token ids int64 ``(n_tokens,)`` for each line of a chunk; identical lines (in the chunk
    or in ``cache``) are mined once; newly mined lines are added to ``cache`` in order."""
    pending: dict[str, LinePlan] = {}
    plans: list[LinePlan] = []
    for line in lines:
        plan = miner.plan(line)
        plans.append(plan)
        if cache.get(line) is None and line not in pending:
            pending[line] = plan
    mined = miner.mine_plans(list(pending.values()), counts)
    fresh = {line: token_ids(plan, wids) for (line, plan), wids in zip(pending.items(), mined)}
    counts["lines_mined"] += len(fresh)
    out = []
    for line, plan in zip(lines, plans):
        ids = fresh.get(line)
        if ids is None:
            ids = cache.get(line)
        out.append(ids)
        count_line(plan, ids, counts)
    counts["dedup_hits"] += len(lines) - len(fresh)
    for line, ids in fresh.items():
        cache.put(line, ids)
    return out
