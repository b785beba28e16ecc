"""The knowledge base of knowledge internalization (KI): one short descriptive text per item.

A knowledge base is a directory with

- ``items.tsv``: UTF-8, header ``id<TAB>source<TAB>title<TAB>text``,
  then one item per line with ids ``1..N`` in order (id ``0`` is reserved for "no knowledge"
  in alignment files, see ``data_prep.alignment_text``). Tabs, newlines and runs of spaces
  inside a field are collapsed to single spaces; no field is empty.
- ``stats.json``: items per source (read / written / mean text length), skipped items by
  reason (duplicates, empty fields), the mean text length over all items.

Sources (each optional, at least one; ids are given in this order, and within a source in
input order):

1. ``--wiki-summaries PATH`` (source ``wikipedia``): a ``.json`` or ``.json.gz`` object
   ``{key: {"title": ..., "extract": ..., ...}}`` (shared/data/wiki_summaries). Item = the
   article title + the first sentence of ``extract`` (``data_prep.first_sentence``): the
   lexical knowledge item of the KI paper (§4.1). The title is the value's ``title`` (the key
   where it has none).
2. ``--wiki-jsonl PATH`` (repeatable, source ``wikipedia``; ``.gz`` allowed): a Wikipedia dump
   as JSON lines, one object per line ``{"title": "Mercury (planet)", "text": "Mercury is the
   smallest planet ..."}`` where ``text`` is the article or its lead; the item is the title
   + the first sentence of ``text`` (as above). Other keys are ignored; blank lines are
   skipped; a line that is not a JSON object with string ``title`` and ``text`` is a
   CorpusError naming the file and line.
3. ``--wordnet-dir DIR`` (source ``wordnet``): WordNet 3.0's ``data.noun``, ``data.verb``,
   ``data.adj``, ``data.adv`` (in that order) parsed directly (format ``man 5 wndb``), one item
   per synset: title = the synset's lemmas (``_`` -> space, adjective markers such as
   ``(a)``/``(p)``/``(ip)`` removed) joined by `` | ``; text = ``"{first lemma}: {definition}"``
   where the definition is the gloss before its first ``; "`` (or ``; e.g. "``) usage example (the whole
   gloss with ``--wordnet-examples``).
4. ``--cmu-dog PATH`` (source ``cmu_dog``): the 30 CMU_DoG movie documents (tarball or
   folder), one item per section ``0..3`` in document id order; title = ``"{movie name}
   (section {i})"``, text = the section (section 0, the movie card, rendered as text by
   ``data_prep.cmu_dog_source.section0_text``).
5. ``--wow-mini DIR`` (source ``wow``): the knowledge sentences of
   ``{train,valid,test}.sent_fact.txt`` (``idx \\t sentence \\t ...`` or ``idx \\t no_fact``),
   each distinct sentence once (first occurrence), title = its first 5 words (the release
   is lower-cased and tokenised and has no article titles).

``--max-items-per-source N`` keeps the first N items of each input (each ``--wiki-jsonl``
file separately), for quick runs. ``--dedup`` (default; ``--no-dedup``) drops exact duplicate
``(title, text)`` pairs after whitespace normalisation, counted in stats.json.
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Collection, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from data_prep.cmu_dog_source import CmuDogSource, documents_of
from data_prep.common import CorpusError, SkipCounter, one_line, setup_logging, write_stats, console_script
from data_prep.first_sentence import first_sentence

logger = logging.getLogger(__name__)

ITEMS_FILE = "items.tsv"
HEADER = ("id", "source", "title", "text")
TITLE_SEP = " | "
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
WORDNET_SS_TYPES = {"data.noun": {"n"}, "data.verb": {"v"}, "data.adj": {"a", "s"}, "data.adv": {"r"}}
WOW_SPLITS = ("train", "valid", "test")
WOW_TITLE_WORDS = 5


@dataclass(frozen=True)
class KnowledgeItem:
    """One knowledge item before it has an id."""

    source: str
    title: str
    text: str


@dataclass
class KnowledgeBase:
    """A loaded knowledge base: parallel lists, position ``i`` holds the item with id ``i + 1``.

    ``ids``: ``int64`` array ``(N,)`` equal to ``1..N``."""

    ids: np.ndarray
    sources: list[str]
    titles: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def _check_id(self, item_id: int) -> int:
        item_id = int(item_id)
        if item_id == 0:
            raise KeyError("knowledge id 0 means 'no knowledge' and has no text")
        if not 1 <= item_id <= len(self):
            raise KeyError(f"knowledge id {item_id} out of range 1..{len(self)}")
        return item_id - 1

    def text_of(self, item_id: int) -> str:
        """The text of item ``item_id`` (``1..N``); KeyError for 0 or an unknown id."""
        return self.texts[self._check_id(item_id)]

    def title_of(self, item_id: int) -> str:
        """The title of item ``item_id`` (``1..N``)."""
        return self.titles[self._check_id(item_id)]

    def title_index(self, sources: Collection[str] | None = ("wikipedia",)) -> dict[str, int]:
        """Lower-cased title -> id, for exact matching of utterance tokens/phrases (§4.3).

        Only items whose source is in ``sources`` (all items for ``None``). Every
        `` | ``-separated alias of a title is a key, with single spaces. A title with a
        trailing disambiguation in parentheses (``"Mercury (planet)"``) is also keyed without
        it (``"mercury"``) unless some item has that plain title. Where several items share a
        key the smallest id wins."""
        wanted = None if sources is None else set(sources)
        index: dict[str, int] = {}
        stripped: dict[str, int] = {}
        for item_id, source, title in zip(self.ids.tolist(), self.sources, self.titles):
            if wanted is not None and source not in wanted:
                continue
            for alias in title.split(TITLE_SEP):
                key = title_key(alias)
                if not key:
                    continue
                index.setdefault(key, item_id)
                plain = strip_disambiguation(key)
                if plain != key and plain:
                    stripped.setdefault(plain, item_id)
        for key, item_id in stripped.items():
            index.setdefault(key, item_id)
        return index


def title_key(title: str) -> str:
    """``"  Harry   Potter "`` -> ``"harry potter"``."""
    return " ".join(title.lower().split())


_DISAMBIGUATION_RE = re.compile(r"^(?P<plain>.*\S)\s+\([^()]*\)$")


def strip_disambiguation(title: str) -> str:
    """``"mercury (planet)"`` -> ``"mercury"``; titles without a trailing ``(...)`` unchanged."""
    m = _DISAMBIGUATION_RE.match(title)
    return m.group("plain") if m else title


# --------------------------------------------------------------------------------------------
# sources


def _open_text(path: str | os.PathLike):
    path = os.fspath(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _skip(skips: SkipCounter | None, reason: str, where: str) -> None:
    """Count a skip in ``skips`` (logged once per reason); without a counter, log at debug."""
    if skips is not None:
        skips.skip(reason, where)
    else:
        logger.debug("skipping %s at %s", reason, where)


def wiki_summaries_items(path: str | os.PathLike, skips: SkipCounter | None = None) -> Iterator[KnowledgeItem]:
    """Title + first sentence of each article of a wiki-summaries ``.json(.gz)`` file
    (``{key: {"title", "extract", ...}}``), in file order. Articles with an empty extract are
    skipped (counted in ``skips``)."""
    path = os.fspath(path)
    try:
        with _open_text(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise CorpusError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from exc
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise CorpusError(path, f"not a readable UTF-8 (gzip) JSON file ({exc})") from exc
    if not isinstance(data, dict):
        raise CorpusError(path, f"expected a JSON object {{title: article}}, got {type(data).__name__}")
    for key, article in data.items():
        if not isinstance(article, dict):
            raise CorpusError(path, f"article {key!r}: expected an object, got {type(article).__name__}")
        title = article.get("title", key)
        extract = article.get("extract")
        if not isinstance(title, str) or not isinstance(extract, str):
            raise CorpusError(path, f"article {key!r}: expected string 'title' and 'extract'")
        item = _wikipedia_item(title, extract, skips, f"{path} article {key!r}")
        if item is not None:
            yield item


def _wikipedia_item(title: str, text: str, skips: SkipCounter | None, where: str) -> KnowledgeItem | None:
    """Title + first sentence of ``text`` as a ``wikipedia`` item; None (a counted skip) when
    either is empty."""
    title = one_line(title)
    sentence = first_sentence(text)
    if not title or not sentence:
        _skip(skips, "wikipedia: empty title or text", where)
        return None
    return KnowledgeItem("wikipedia", title, sentence)


def wiki_jsonl_items(path: str | os.PathLike, skips: SkipCounter | None = None) -> Iterator[KnowledgeItem]:
    """Title + first sentence of ``text`` for each line ``{"title": str, "text": str}`` of a
    JSON-lines file (``.gz`` allowed). Blank lines are skipped; a malformed line raises
    CorpusError with its line number."""
    path = os.fspath(path)
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj: Any = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(path, f"invalid JSON ({exc.msg}, column {exc.colno}); expected "
                                  '{"title": ..., "text": ...}', line_no) from exc
            if not isinstance(obj, dict):
                raise CorpusError(path, f"expected a JSON object, got {type(obj).__name__}", line_no)
            title, text = obj.get("title"), obj.get("text")
            if not isinstance(title, str) or not isinstance(text, str):
                raise CorpusError(path, "expected string fields 'title' and 'text'", line_no)
            item = _wikipedia_item(title, text, skips, f"{path}:{line_no}")
            if item is not None:
                yield item


_ADJ_MARKER_RE = re.compile(r"\((?:a|p|ip)\)$")
# where a gloss's usage examples begin: '; "...' (also '; e.g. "...')
_EXAMPLE_RE = re.compile(r';\s*(?:e\.g\.\s*)?"')


def parse_wordnet_line(line: str, path: str, line_no: int, with_examples: bool = False) -> KnowledgeItem:
    """One synset line of a WordNet ``data.*`` file as an item (format ``man 5 wndb``:
    ``offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt ... | gloss``)."""
    head, sep, gloss = line.partition(" | ")
    if not sep:
        gloss_at = line.find("|")
        if gloss_at < 0:
            raise CorpusError(path, "expected a synset line with ' | ' before the gloss", line_no)
        head, gloss = line[:gloss_at], line[gloss_at + 1 :]
    fields = head.split()
    expected = WORDNET_SS_TYPES.get(os.path.basename(path))
    if len(fields) < 6 or not (fields[0].isdigit() and len(fields[0]) == 8):
        raise CorpusError(path, "expected 'synset_offset lex_filenum ss_type w_cnt word lex_id ...'", line_no)
    if fields[2] not in {"n", "v", "a", "s", "r"} or (expected is not None and fields[2] not in expected):
        raise CorpusError(path, f"unexpected ss_type {fields[2]!r}", line_no)
    try:
        w_cnt = int(fields[3], 16)
    except ValueError as exc:
        raise CorpusError(path, f"w_cnt {fields[3]!r} is not hexadecimal", line_no) from exc
    if w_cnt < 1 or len(fields) < 4 + 2 * w_cnt:
        raise CorpusError(path, f"w_cnt {w_cnt} but only {(len(fields) - 4) // 2} words", line_no)
    lemmas: list[str] = []
    for word in fields[4 : 4 + 2 * w_cnt : 2]:
        lemma = " ".join(_ADJ_MARKER_RE.sub("", word).split("_"))
        lemma = " ".join(lemma.split())
        if lemma and lemma not in lemmas:
            lemmas.append(lemma)
    gloss = one_line(gloss)
    definition = gloss if with_examples else _EXAMPLE_RE.split(gloss, 1)[0].strip()
    if not definition:
        definition = gloss
    if not lemmas or not definition:
        raise CorpusError(path, "synset without lemmas or gloss", line_no)
    return KnowledgeItem("wordnet", TITLE_SEP.join(lemmas), f"{lemmas[0]}: {definition}")


def wordnet_items(
    directory: str | os.PathLike, with_examples: bool = False, skips: SkipCounter | None = None
) -> Iterator[KnowledgeItem]:
    """One item per synset of ``data.noun``, ``data.verb``, ``data.adj``, ``data.adv`` under
    ``directory`` (licence header lines, which start with two spaces, are skipped)."""
    directory = os.fspath(directory)
    missing = [n for n in WORDNET_FILES if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        raise CorpusError(directory, f"missing WordNet data files {missing} (expected {list(WORDNET_FILES)})")
    for name in WORDNET_FILES:
        path = os.path.join(directory, name)
        with open(path, encoding="utf-8", errors="strict") as f:
            for line_no, line in enumerate(f, 1):
                if line.startswith("  "):
                    continue
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                yield parse_wordnet_line(line, path, line_no, with_examples)


def _movie_names(source: CmuDogSource) -> dict[int, str]:
    names: dict[int, str] = {}
    for rel in source.list("WikiData"):
        doc = source.load_json(rel)
        card = doc.get("0") if isinstance(doc, dict) else None
        name = card.get("movieName") if isinstance(card, dict) else None
        if isinstance(doc, dict) and isinstance(name, str) and one_line(name):
            names[doc["wikiDocumentIdx"]] = one_line(name)
    return names


def cmu_dog_items(path: str | os.PathLike, skips: SkipCounter | None = None) -> Iterator[KnowledgeItem]:
    """The sections ``0..3`` of the CMU_DoG movie documents (tarball or folder), in document id
    order; title ``"{movie name} (section {i})"`` (``"CMU_DoG document {id}"`` without a name)."""
    source = CmuDogSource(path)
    docs = documents_of(source)
    names = _movie_names(source)
    for doc_id in sorted(docs):
        name = names.get(doc_id)
        if name is None:
            logger.warning("%s: document %d has no movie name; titled by its id", source.path, doc_id)
            name = f"CMU_DoG document {doc_id}"
        for sec, text in sorted(docs[doc_id].items()):
            if not text.strip():
                _skip(skips, "cmu_dog: empty section", f"{source.path} document {doc_id} section {sec}")
                continue
            yield KnowledgeItem("cmu_dog", f"{name} (section {sec})", text)


def wow_mini_items(directory: str | os.PathLike, skips: SkipCounter | None = None) -> Iterator[KnowledgeItem]:
    """Each distinct knowledge sentence of ``{train,valid,test}.sent_fact.txt`` (first occurrence
    order); title = its first 5 words. Repeats are counted in ``skips``."""
    directory = os.fspath(directory)
    paths = [os.path.join(directory, f"{s}.sent_fact.txt") for s in WOW_SPLITS]
    present = [p for p in paths if os.path.isfile(p)]
    if not present:
        raise CorpusError(directory, f"no {{{','.join(WOW_SPLITS)}}}.sent_fact.txt files")
    seen: set[str] = set()
    for path in present:
        with open(path, encoding="utf-8", newline="\n") as f:
            for line_no, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) < 2 or not fields[0].strip().isdigit():
                    raise CorpusError(path, "expected 'idx<TAB>sentence<TAB>...' or 'idx<TAB>no_fact'", line_no)
                sentences = fields[1:]
                if [s.strip() for s in sentences] == ["no_fact"]:
                    continue
                for sentence in sentences:
                    sentence = one_line(sentence)
                    if not sentence:
                        _skip(skips, "wow: empty knowledge sentence", f"{path}:{line_no}")
                        continue
                    if sentence in seen:
                        _skip(skips, "wow: repeated knowledge sentence", f"{path}:{line_no}")
                        continue
                    seen.add(sentence)
                    yield KnowledgeItem("wow", " ".join(sentence.split()[:WOW_TITLE_WORDS]), sentence)


# --------------------------------------------------------------------------------------------
# writing and loading


def write_knowledge_base(
    out_dir: str | os.PathLike,
    items: Iterable[KnowledgeItem],
    dedup: bool = True,
    skips: SkipCounter | None = None,
) -> dict:
    """Write ``items.tsv`` (ids 1..N in input order) and ``stats.json`` under ``out_dir``.

    Fields are whitespace-normalised; an item with an empty field is skipped, and with
    ``dedup`` a repeated ``(title, text)`` pair is skipped (both counted). ``skips`` may carry
    counts from the readers into stats. Returns the stats dict."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    skips = skips if skips is not None else SkipCounter()
    read: Counter[str] = Counter()
    written: Counter[str] = Counter()
    text_chars: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    n = 0
    tmp_path = os.path.join(out_dir, ITEMS_FILE + ".tmp")
    with open(tmp_path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(HEADER) + "\n")
        for item in tqdm(items, desc="knowledge items", unit="item", mininterval=2.0):
            source, title, text = one_line(item.source), one_line(item.title), one_line(item.text)
            read[source] += 1
            if not source or not title or not text:
                skips.skip(f"{source or '?'}: empty field", f"{source} item {title!r}")
                continue
            if dedup:
                key = (title, text)
                if key in seen:
                    skips.skip(f"{source}: duplicate (title, text)", f"{source} item {title!r}")
                    continue
                seen.add(key)
            n += 1
            f.write(f"{n}\t{source}\t{title}\t{text}\n")
            written[source] += 1
            text_chars[source] += len(text)
    os.replace(tmp_path, os.path.join(out_dir, ITEMS_FILE))
    stats = {
        "items": n,
        "dedup": dedup,
        "sources": {
            s: {
                "read": read[s],
                "written": written[s],
                "avg_text_chars": round(text_chars[s] / written[s], 2) if written[s] else 0.0,
            }
            for s in read
        },
        "skipped": dict(skips.counts),
        "avg_text_chars": round(sum(text_chars.values()) / n, 2) if n else 0.0,
    }
    write_stats(out_dir, stats)
    return stats


def _items_path(path_or_dir: str | os.PathLike) -> str:
    path = os.fspath(path_or_dir)
    return os.path.join(path, ITEMS_FILE) if os.path.isdir(path) else path


def _check_header(first: str, path: str) -> None:
    if first.rstrip("\n") != "\t".join(HEADER):
        raise CorpusError(path, f"expected the header {'<TAB>'.join(HEADER)!r}, got {first.rstrip()!r}", 1)


def load_knowledge_base(path_or_dir: str | os.PathLike) -> KnowledgeBase:
    """Read ``items.tsv`` (a knowledge-base directory or the file itself). Validates the
    header, 4 non-empty tab-separated fields per line and ids ``1, 2, ...`` in order;
    CorpusError naming the line otherwise."""
    path = _items_path(path_or_dir)
    sources: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    with open(path, encoding="utf-8", newline="\n") as f:
        _check_header(f.readline(), path)
        for line_no, line in enumerate(f, 2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 4:
                raise CorpusError(
                    path, f"expected 4 tab-separated fields (id, source, title, text), got {len(fields)}", line_no
                )
            expected_id = line_no - 1
            if fields[0] != str(expected_id):
                raise CorpusError(
                    path, f"expected id {expected_id} (ids are 1..N in order), got {fields[0]!r}", line_no
                )
            if not all(fields[1:]):
                raise CorpusError(path, "empty source, title or text", line_no)
            sources.append(fields[1])
            titles.append(fields[2])
            texts.append(fields[3])
    return KnowledgeBase(np.arange(1, len(texts) + 1, dtype=np.int64), sources, titles, texts)


def count_knowledge_items(path_or_dir: str | os.PathLike) -> int:
    """N, the number of items of ``items.tsv``, without loading it (checks the header and that
    the last line's id equals the line count)."""
    path = _items_path(path_or_dir)
    n = 0
    last = ""
    with open(path, encoding="utf-8", newline="\n") as f:
        _check_header(f.readline(), path)
        for line in f:
            n += 1
            last = line
    if n and last.split("\t", 1)[0] != str(n):
        raise CorpusError(path, f"the last line's id should be {n} (ids are 1..N in order)", n + 1)
    return n


# --------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build-knowledge-base",
        description="Build the KI knowledge base (items.tsv + stats.json). Ids follow the source "
        "order wiki-summaries, wiki-jsonl, wordnet, cmu-dog, wow-mini.",
    )
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--wiki-summaries", help="wiki summaries .json(.gz): title + first sentence of extract")
    parser.add_argument("--wiki-jsonl", action="append", default=[],
                        help='Wikipedia JSON lines {"title", "text"} (repeatable; .gz allowed)')
    parser.add_argument("--wordnet-dir", help="directory with WordNet data.noun/.verb/.adj/.adv")
    parser.add_argument("--wordnet-examples", action="store_true", help="keep the WordNet usage examples")
    parser.add_argument("--cmu-dog", help="CMU_DoG tarball or folder: the movie document sections")
    parser.add_argument("--wow-mini", help="wow_mini folder: the distinct knowledge sentences")
    parser.add_argument("--max-items-per-source", type=int, default=None,
                        help="keep the first N items of each input (quick runs)")
    parser.add_argument("--dedup", action=argparse.BooleanOptionalAction, default=True,
                        help="drop exact duplicate (title, text) pairs (default: on)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.max_items_per_source is not None and args.max_items_per_source < 1:
        parser.error("--max-items-per-source must be positive")
    skips = SkipCounter()
    inputs: list[Iterable[KnowledgeItem]] = []
    if args.wiki_summaries:
        inputs.append(wiki_summaries_items(args.wiki_summaries, skips))
    for path in args.wiki_jsonl:
        inputs.append(wiki_jsonl_items(path, skips))
    if args.wordnet_dir:
        inputs.append(wordnet_items(args.wordnet_dir, args.wordnet_examples, skips))
    if args.cmu_dog:
        inputs.append(cmu_dog_items(args.cmu_dog, skips))
    if args.wow_mini:
        inputs.append(wow_mini_items(args.wow_mini, skips))
    if not inputs:
        parser.error("give at least one source (--wiki-summaries, --wiki-jsonl, --wordnet-dir, --cmu-dog, --wow-mini)")
    if args.max_items_per_source is not None:
        inputs = [itertools.islice(it, args.max_items_per_source) for it in inputs]
    start = time.perf_counter()
    stats = write_knowledge_base(args.output, itertools.chain.from_iterable(inputs), args.dedup, skips)
    logger.info("wrote %d items to %s in %.1f s", stats["items"], os.path.join(args.output, ITEMS_FILE),
                time.perf_counter() - start)
    return stats


cli = console_script(main)  # the console script: exit status 0 on success

if __name__ == "__main__":
    main()
