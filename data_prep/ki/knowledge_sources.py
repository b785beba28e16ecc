"""The per-source readers of the KI knowledge base: each yields :class:`KnowledgeItem` s (source,
title, text; no ids yet) from one input, in input order. ``data_prep.ki.knowledge_base`` numbers
them and writes ``items.tsv``; ``build-knowledge-base`` reads the sources in the order below.

Input formats (the ``build-knowledge-base`` option and the item ``source`` of each):

1. ``--wiki-summaries PATH`` (source ``wikipedia``): a ``.json`` or ``.json.gz`` object
   ``{key: {"title": ..., "extract": ..., ...}}`` (shared/data/wiki_summaries). Item = the
   article title + the first sentence of ``extract`` (``data_prep.ki.first_sentence``): the
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
   ``data_prep.corpora.cmu_dog_source.section0_text``).
5. ``--wow-mini DIR`` (source ``wow``): the knowledge sentences of
   ``{train,valid,test}.sent_fact.txt`` (``idx \\t sentence \\t ...`` or ``idx \\t no_fact``),
   each distinct sentence once (first occurrence), title = its first 5 words (the release
   is lower-cased and tokenised and has no article titles).

:class:`KnowledgeItem` and :data:`TITLE_SEP` (the separator of a title's aliases) live here so
that ``data_prep.ki.knowledge_base`` imports this module and not the other way round; both are
re-exported there.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator

from data_prep.corpora.cmu_dog_source import CmuDogSource, documents_of
from informative_dialogue import text_io
from informative_dialogue.errors import CorpusError
from data_prep.common import SkipCounter, one_line
from data_prep.ki.first_sentence import first_sentence

logger = logging.getLogger(__name__)

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


def _open_text(path: str | os.PathLike):
    path = os.fspath(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _open_binary(path: str | os.PathLike):
    path = os.fspath(path)
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _iter_text_lines(path: str) -> Iterator[str]:
    """The lines of a (gzipped) UTF-8 text file, split on ``\\n`` only; a lone ``\\r`` or
    non-UTF-8 bytes are a CorpusError naming the file and line (:mod:`informative_dialogue.text_io`)."""
    try:
        with _open_binary(path) as f:
            yield from text_io.iter_stream_lines(f, path)
    except (gzip.BadGzipFile, EOFError) as exc:
        raise CorpusError(path, f"not a readable gzip file ({exc})") from exc


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
    except UnicodeDecodeError:
        with _open_binary(path) as raw:
            raise text_io.not_utf8_error(path, raw) from None  # names the line and column
    except (OSError, EOFError) as exc:
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
    for line_no, line in enumerate(_iter_text_lines(path), 1):
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
        for line_no, line in enumerate(_iter_text_lines(path), 1):
            if line.startswith("  "):
                continue
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
        for line_no, line in enumerate(_iter_text_lines(path), 1):
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
