"""Files of knowledge tries (KID, paper appendix A.2.1): one trie per generation example, the
writer, the validating readers and the in-memory stand-in used by the decoders.

On-disk format (JSONL, UTF-8, one line per example, line ``i`` = example ``i`` of the
generation subset, i.e. fairseq's ``sample["id"]``)::

    {"id": 0,
     "entities": ["marijuana", "driving", "ability"],
     "trie": {"drive": ["influence of drugs", "vehicle collision"],
              "drug": ["heroin", "cocaine"]},
     "surface": {"drive": ["driving", "drivers"]}}

* ``id`` (int, required): the example index; must equal the 0-based line number (checked on
  load, so a file that is out of step with the data fails loudly).
* ``trie`` (object, required, may be empty): key -> list of value phrases. Keys must be
  produced by :meth:`WordNormalizer.stem` (Porter stemmer of NLTK, lower-cased, one token);
  values are lower-cased phrases, split on white space into demonstration words at query
  time (stop words and tokens without letters or digits are dropped there).
* ``entities`` (list of strings, optional): the input's entities, which initialise the local
  memory G_loc (multi-word entities contribute each content word). ``null``/absent: the
  decoder takes the entity words it finds in the source text instead.
* ``surface`` (object, optional): key -> surface forms of the subject; only Little KID (the
  flat-list ablation of appendix A.3) uses them, as the triples' subject end nodes.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from informative_dialogue.kid.trie import KnowledgeTrie, WordNormalizer

logger = logging.getLogger(__name__)

__all__ = ["TrieExample", "TrieStore", "InMemoryTries", "save_jsonl", "load_jsonl", "file_stats"]


@dataclass
class TrieExample:
    """One line of a trie file: the example's trie and its initial entities (or ``None``)."""

    trie: KnowledgeTrie
    entities: Optional[List[str]]


def save_jsonl(
    path: str | os.PathLike,
    examples: Sequence[Tuple[KnowledgeTrie, Optional[Sequence[str]]]],
) -> Dict[str, float]:
    """Write ``(trie, entities)`` pairs, one line per example, ids 0..n-1; return size stats."""
    with open(path, "w", encoding="utf-8") as f:
        for i, (trie, entities) in enumerate(examples):
            rec: Dict[str, Any] = {"id": i, "entities": list(entities) if entities is not None else None}
            rec.update(trie.to_json())
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return file_stats([t for t, _ in examples], os.path.getsize(path))


def file_stats(tries: Sequence[KnowledgeTrie], n_bytes: int) -> Dict[str, float]:
    """Aggregate size report of a trie file (per-example means and totals, bytes on disk)."""
    per = [t.stats() for t in tries]
    n = max(len(per), 1)
    return {
        "examples": len(per),
        "empty": sum(1 for t in tries if t.is_empty()),
        "bytes": n_bytes,
        "keys_total": sum(p["keys"] for p in per),
        "keys_mean": sum(p["keys"] for p in per) / n,
        "value_words_mean": sum(p["value_words"] for p in per) / n,
        "max_depth": max((p["max_depth"] for p in per), default=0),
    }


def _parse_line(line: str, lineno: int, path: str, normalizer: WordNormalizer) -> TrieExample:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno + 1}: invalid JSON ({e})") from e
    if not isinstance(rec, Mapping) or "trie" not in rec:
        raise ValueError(f"{path}:{lineno + 1}: expected an object with a 'trie' field")
    if rec.get("id", lineno) != lineno:
        raise ValueError(f"{path}:{lineno + 1}: id {rec.get('id')} != line index {lineno}")
    values = rec["trie"]
    if not isinstance(values, Mapping) or not all(isinstance(v, list) for v in values.values()):
        raise ValueError(f"{path}:{lineno + 1}: 'trie' must map keys to lists of phrases")
    entities = rec.get("entities")
    if entities is not None and not (isinstance(entities, list) and all(isinstance(e, str) for e in entities)):
        raise ValueError(f"{path}:{lineno + 1}: 'entities' must be a list of strings or null")
    trie = KnowledgeTrie(
        values={str(k): [str(v) for v in vs] for k, vs in values.items()},
        surface={str(k): [str(v) for v in vs] for k, vs in (rec.get("surface") or {}).items()},
        normalizer=normalizer,
    )
    return TrieExample(trie=trie, entities=entities)


def load_jsonl(path: str | os.PathLike, normalizer: Optional[WordNormalizer] = None) -> List[TrieExample]:
    """Read a whole trie file into memory (small files, tests); see :class:`TrieStore`."""
    store = TrieStore(path, normalizer=normalizer, cache_size=0)
    return [store[i] for i in range(len(store))]


class TrieStore:
    """Random access to a trie JSONL file by example index, parsed lazily.

    The file is scanned once on construction (line offsets, validation of every line, count
    of empty tries); tries are then parsed on demand and the last ``cache_size`` kept.
    ``shared=True`` serves line 0 for every index (one trie for all inputs, e.g.
    fairseq-interactive, whose ids restart at 0 in every batch).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        normalizer: Optional[WordNormalizer] = None,
        shared: bool = False,
        cache_size: int = 256,
    ) -> None:
        self.path = os.fspath(path)
        self.normalizer = normalizer or WordNormalizer()
        self.shared = shared
        self.cache_size = cache_size
        self._cache: Dict[int, TrieExample] = {}
        self._offsets: List[int] = []
        empty: List[bool] = []
        tries_for_stats: List[KnowledgeTrie] = []
        with open(self.path, "rb") as f:
            offset = 0
            for lineno, raw in enumerate(f):
                line = raw.decode("utf-8").strip()
                if not line:
                    raise ValueError(f"{self.path}:{lineno + 1}: empty line (one JSON object per example)")
                ex = _parse_line(line, lineno, self.path, self.normalizer)
                self._offsets.append(offset)
                empty.append(ex.trie.is_empty())
                tries_for_stats.append(ex.trie)
                offset += len(raw)
                if shared:
                    break
        self.empty = empty
        self.stats = file_stats(tries_for_stats, os.path.getsize(self.path))
        del tries_for_stats
        self.all_empty = all(empty)
        if self.all_empty:
            logger.warning("KID: trie file %s holds no knowledge (%d lines, all tries empty)", self.path, len(empty))
        else:
            logger.info("KID: trie file %s: %s", self.path, self.stats)

    def __len__(self) -> int:
        return len(self._offsets)

    def is_empty(self, index: int) -> bool:
        return self.empty[self._line(index)]

    def _line(self, index: int) -> int:
        if self.shared:
            return 0
        if not 0 <= index < len(self._offsets):
            raise IndexError(
                f"KID: example {index} has no line in {self.path} ({len(self._offsets)} lines): "
                "the trie file must have one line per example of the generation subset"
            )
        return index

    def __getitem__(self, index: int) -> TrieExample:
        line_no = self._line(index)
        hit = self._cache.get(line_no)
        if hit is not None:
            return hit
        with open(self.path, "rb") as f:
            f.seek(self._offsets[line_no])
            line = f.readline().decode("utf-8").strip()
        ex = _parse_line(line, line_no, self.path, self.normalizer)
        if self.cache_size > 0:
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[line_no] = ex
        return ex


class InMemoryTries:
    """The :class:`TrieStore` interface over tries already in memory (Hugging Face use).

    Args:
        examples: one :class:`TrieExample` (or bare :class:`KnowledgeTrie`) per example;
            a single one is shared by every example when ``shared`` is true.
    """

    def __init__(self, examples: Sequence[TrieExample | KnowledgeTrie], shared: bool = False) -> None:
        self.examples = [e if isinstance(e, TrieExample) else TrieExample(e, None) for e in examples]
        if not self.examples:
            raise ValueError("InMemoryTries needs at least one trie")
        self.shared = shared
        self.all_empty = all(e.trie.is_empty() for e in self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    def _line(self, index: int) -> int:
        if self.shared:
            return 0
        if not 0 <= index < len(self.examples):
            raise IndexError(f"KID: example {index} has no trie ({len(self.examples)} given)")
        return index

    def is_empty(self, index: int) -> bool:
        return self.examples[self._line(index)].trie.is_empty()

    def __getitem__(self, index: int) -> TrieExample:
        return self.examples[self._line(index)]
