"""The knowledge base of knowledge internalization (KI): one short descriptive text per item.

A knowledge base is a directory with

- ``items.tsv``: UTF-8, header ``id<TAB>source<TAB>title<TAB>text``,
  then one item per line with ids ``1..N`` in order (id ``0`` is reserved for "no knowledge"
  in alignment files, see ``informative_dialogue.ki.alignment_text``). Tabs, newlines and runs of spaces
  inside a field are collapsed to single spaces; no field is empty.
- ``stats.json``: items per source (read / written / mean text length), skipped items by
  reason (duplicates, empty fields), the mean text length over all items.

Sources (each optional, at least one; ids are given in this order, and within a source in
input order): ``--wiki-summaries PATH`` and ``--wiki-jsonl PATH`` (repeatable; source
``wikipedia``), ``--wordnet-dir DIR`` (``wordnet``), ``--cmu-dog PATH`` (``cmu_dog``),
``--wow-mini DIR`` (``wow``). Their input formats and the items read from each are documented
with the readers in :mod:`data_prep.ki.knowledge_sources`.

``--max-items-per-source N`` keeps the first N items of each input (each ``--wiki-jsonl``
file separately), for quick runs. ``--dedup`` (default; ``--no-dedup``) drops exact duplicate
``(title, text)`` pairs after whitespace normalisation, counted in stats.json.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Collection, Iterable

import numpy as np
from tqdm import tqdm

from informative_dialogue import text_io
from informative_dialogue.errors import CorpusError
from informative_dialogue.text_io import OutputSet
from data_prep.common import SkipCounter, dump_stats, one_line
from informative_dialogue.cli import setup_logging, console_script
from data_prep.ki.knowledge_sources import (
    TITLE_SEP, KnowledgeItem, cmu_dog_items,
    wiki_jsonl_items, wiki_summaries_items, wordnet_items, wow_mini_items,
)

logger = logging.getLogger(__name__)

ITEMS_FILE = "items.tsv"
HEADER = ("id", "source", "title", "text")


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
# writing and loading


def write_knowledge_base(
    out_dir: str | os.PathLike,
    items: Iterable[KnowledgeItem],
    dedup: bool = True,
    skips: SkipCounter | None = None,
) -> dict:
    """Write ``items.tsv`` (ids 1..N in input order) and ``stats.json`` under ``out_dir``, both or
    neither (a failure while reading the sources leaves an earlier knowledge base as it was).

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
    outputs = OutputSet()  # items.tsv and stats.json move into out_dir together, or neither
    with outputs, open(outputs.path(os.path.join(out_dir, ITEMS_FILE)), "w", encoding="utf-8", newline="\n") as f:
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
        stats = _stats(n, dedup, read, written, text_chars, skips)
        dump_stats(outputs.path(os.path.join(out_dir, "stats.json")), stats)
    return stats


def _stats(n: int, dedup: bool, read: Counter, written: Counter, text_chars: Counter, skips: SkipCounter) -> dict:
    """The stats.json of a knowledge base."""
    return {
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
    lines = text_io.iter_lines(path)  # split on \n only, UTF-8; errors name the line
    _check_header(next(lines, ""), path)
    for line_no, line in enumerate(lines, 2):
        fields = line.split("\t")
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
    lines = text_io.iter_lines(path)
    _check_header(next(lines, ""), path)
    for line in lines:
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
