"""Knowledge trie of knowledge-infused decoding (KID, paper appendix A.2): data structure,
multi-hop query and the on-disk JSONL format.

Data structure
--------------
A :class:`KnowledgeTrie` maps **keys** (Porter stems of single subject tokens, e.g.
``"drive"`` for "driving") to **values** (object phrases of the subject's triples, e.g.
``"influence of drugs"``). Keys are looked up by *exact* match of the stem -- never by prefix
("car" does not match "carbon"). A value links to the next hop when one of its words stems to
another key (value "influence of drugs" -> key "drug"); the links and the depth of every key
(the deepest chain below it, found by depth-first search) are derived on construction.

:meth:`KnowledgeTrie.query` collects the demonstrations of Algorithm 2: the union of the
values reachable from a set of query keys within ``hops`` hops, with a visited set so that
cycles (a -> b -> a) terminate.

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

Item 1 of the KID issue (retrieval + triple extraction) builds tries with
:meth:`KnowledgeTrie.from_triples` and writes them with :func:`save_jsonl`.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from data_prep.stop_words import english_stop_words

logger = logging.getLogger(__name__)

__all__ = [
    "WordNormalizer",
    "KnowledgeTrie",
    "TrieStore",
    "TrieExample",
    "save_jsonl",
    "load_jsonl",
]


class WordNormalizer:
    """Lower-casing, Porter stemming and stop-word test for knowledge words.

    The one place that defines how a word becomes a trie key: trie builders and the decoder
    must both use :meth:`stem`. NLTK and spaCy (for its stop-word list) are imported lazily;
    results are cached per instance.
    """

    def __init__(self, stop_words: Optional[Iterable[str]] = None) -> None:
        from nltk.stem.porter import PorterStemmer

        self._stemmer = PorterStemmer()
        self.stop_words: frozenset = (
            english_stop_words() if stop_words is None else frozenset(w.lower() for w in stop_words)
        )
        self._stem_cache: Dict[str, str] = {}

    @staticmethod
    def clean(word: str) -> str:
        """Lower-case and strip non-alphanumeric characters from both ends (``"Car,"`` -> ``"car"``)."""
        word = word.lower()
        start, end = 0, len(word)
        while start < end and not word[start].isalnum():
            start += 1
        while end > start and not word[end - 1].isalnum():
            end -= 1
        return word[start:end]

    def is_content(self, word: str) -> bool:
        """A cleaned word that carries knowledge: has a letter and is not a stop word."""
        return bool(word) and word not in self.stop_words and any(c.isalpha() for c in word)

    def stem(self, word: str) -> str:
        """The trie key of ``word``: Porter stem of the cleaned, lower-cased word."""
        cached = self._stem_cache.get(word)
        if cached is None:
            cached = self._stemmer.stem(self.clean(word))
            self._stem_cache[word] = cached
        return cached

    def content_words(self, phrase: str) -> List[str]:
        """Cleaned content words of a phrase, in order (duplicates kept)."""
        words = (self.clean(w) for w in phrase.split())
        return [w for w in words if self.is_content(w)]


@dataclass
class KnowledgeTrie:
    """External knowledge G_ext of one example: stemmed key -> value phrases.

    Attributes:
        values: key -> value phrases (order kept, duplicates removed).
        surface: key -> surface forms of the subject (optional, for Little KID).
        links: key -> next-hop keys (keys mentioned in its values), derived.
        depth: key -> number of hops of the deepest chain starting at the key (1 for a key
            whose values mention no other key), derived by DFS; back edges of cycles are
            ignored.
        value_words: key -> content words of its values (the demonstrations it yields).
    """

    values: Dict[str, List[str]]
    surface: Dict[str, List[str]] = field(default_factory=dict)
    normalizer: Optional[WordNormalizer] = field(default=None, repr=False, compare=False)
    links: Dict[str, List[str]] = field(init=False, default_factory=dict, compare=False)
    depth: Dict[str, int] = field(init=False, default_factory=dict, compare=False)
    value_words: Dict[str, List[str]] = field(init=False, default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.normalizer is None:
            self.normalizer = WordNormalizer()
        norm = self.normalizer
        for key, vals in self.values.items():
            if not isinstance(key, str) or not key or " " in key:
                raise ValueError(f"trie key {key!r} must be a single non-empty token (a stem)")
            words: List[str] = []
            seen: Set[str] = set()
            for phrase in vals:
                for w in norm.content_words(phrase):
                    if w not in seen:
                        seen.add(w)
                        words.append(w)
            self.value_words[key] = words
            nxt: List[str] = []
            for w in words:
                k = norm.stem(w)
                if k != key and k in self.values and k not in nxt:
                    nxt.append(k)
            self.links[key] = nxt
        self.depth = self._dfs_depths()

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_triples(
        cls,
        triples: Iterable[Tuple[str, str, str]],
        normalizer: Optional[WordNormalizer] = None,
    ) -> "KnowledgeTrie":
        """Build from ``(subject, relation, object)`` triples (relation unused).

        Every content word of the subject becomes a key (its stem) with the object phrase as
        a value, so "north atlantic" yields keys "north" and "atlant".
        """
        norm = normalizer or WordNormalizer()
        values: Dict[str, List[str]] = {}
        surface: Dict[str, List[str]] = {}
        for subj, _rel, obj in triples:
            obj = " ".join(obj.lower().split())
            if not obj:
                continue
            for word in norm.content_words(subj):
                key = norm.stem(word)
                if not key:
                    continue
                vals = values.setdefault(key, [])
                if obj not in vals:
                    vals.append(obj)
                forms = surface.setdefault(key, [])
                if word not in forms:
                    forms.append(word)
        return cls(values=values, surface=surface, normalizer=norm)

    def _dfs_depths(self) -> Dict[str, int]:
        """Iterative post-order DFS: depth(k) = 1 + max depth of its children (0 if none)."""
        depth: Dict[str, int] = {}
        on_path: Set[str] = set()
        for root in self.values:
            if root in depth:
                continue
            stack: List[Tuple[str, Iterator[str]]] = [(root, iter(self.links[root]))]
            on_path.add(root)
            while stack:
                node, children = stack[-1]
                child = next(children, None)
                if child is None:
                    stack.pop()
                    on_path.discard(node)
                    depth[node] = 1 + max(
                        (depth[c] for c in self.links[node] if c in depth and c not in on_path),
                        default=0,
                    )
                elif child not in depth and child not in on_path:
                    on_path.add(child)
                    stack.append((child, iter(self.links[child])))
        return depth

    # -- query --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.values)

    def __contains__(self, key: object) -> bool:
        return key in self.values

    def is_empty(self) -> bool:
        return not any(self.value_words.values())

    def query(self, keys: Iterable[str], hops: int) -> List[str]:
        """Demonstration words reachable from ``keys`` (stems) within ``hops`` hops.

        Hop 1 = the values of the query keys (exact match); hop h+1 = the values of the keys
        their values mention. Each key is expanded at most once (visited set), so cycles
        terminate. Returns the union of the value words of all hops in first-seen order.
        """
        if hops < 1:
            return []
        visited: Set[str] = set()
        frontier = [k for k in dict.fromkeys(keys) if k in self.values]
        out: Dict[str, None] = {}
        for _ in range(hops):
            if not frontier:
                break
            nxt: List[str] = []
            for key in frontier:
                if key in visited:
                    continue
                visited.add(key)
                for w in self.value_words[key]:
                    out.setdefault(w, None)
                nxt.extend(k for k in self.links[key] if k not in visited)
            frontier = list(dict.fromkeys(nxt))
        return list(out)

    def all_words(self) -> List[str]:
        """Little KID's flat list: all end nodes (subject surface forms + value words)."""
        out: Dict[str, None] = {}
        for key in self.values:
            for w in self.surface.get(key, []):
                if self.normalizer.is_content(w):
                    out.setdefault(w, None)
            for w in self.value_words[key]:
                out.setdefault(w, None)
        return list(out)

    def stats(self) -> Dict[str, float]:
        """Size report: keys, value phrases, distinct value words, links, max/mean depth."""
        n_keys = len(self.values)
        return {
            "keys": n_keys,
            "values": sum(len(v) for v in self.values.values()),
            "value_words": len({w for ws in self.value_words.values() for w in ws}),
            "links": sum(len(v) for v in self.links.values()),
            "max_depth": max(self.depth.values(), default=0),
            "mean_depth": (sum(self.depth.values()) / n_keys) if n_keys else 0.0,
        }

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"trie": self.values}
        if self.surface:
            out["surface"] = self.surface
        return out


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
            logger.warning(
                "KID: trie file %s holds no knowledge (%d lines, all tries empty): "
                "decoding is plain decoding", self.path, len(empty),
            )
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
        if self.all_empty:
            logger.warning("KID: the knowledge tries hold no knowledge: decoding is plain decoding")

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
