"""Knowledge trie of knowledge-infused decoding (KID, paper appendix A.2): data structure,
multi-hop query, JSON form of one trie.

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

The on-disk JSONL format (one trie per example), its writer and its readers live in
:mod:`informative_dialogue.kid.trie_files`.

Item 1 of the KID issue (retrieval + triple extraction) builds tries with
:meth:`KnowledgeTrie.from_triples` and writes them with :func:`informative_dialogue.kid.trie_files.save_jsonl`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from informative_dialogue.stop_words import english_stop_words

__all__ = ["WordNormalizer", "KnowledgeTrie"]


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
