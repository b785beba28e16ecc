"""Passage collections for knowledge-infused decoding (KID, paper section 3.1): the documents
that ``kid-retrieve`` searches and ``kid-build-trie`` turns into knowledge tries.

Every source becomes a list of :class:`Passage` ``(id, title, text)`` with unique ids, text
whitespace-normalised to one line (case kept):

``cmu_dog``
    the CMU_DoG movie documents (``cmu_dog.tar.gz`` or its directory, read by
    :func:`data_prep.corpora.cmu_dog.load_documents`): one passage per document section, id
    ``cmu_dog/<wikiDocumentIdx>/<section>``, title = the movie name (from section 0).
``wow_mini``
    the knowledge sentences of the WoW mini release (a folder with
    ``{train,valid,test}.sent_fact.txt``, read by :func:`data_prep.corpora.wow.read_sent_fact`): one
    passage per *distinct* sentence (first occurrence wins), id ``wow/<split>/<idx>/<j>``,
    no title.
``wiki_summaries``
    ``summaries_en.json.gz`` (``{title: {title, extract, description, topic}}``): each
    extract is cut into passages of at most ``max_words`` words (default 100, the size of
    the RAG/DPR Wikipedia chunks) by packing whole sentences greedily; a sentence longer than
    ``max_words`` is cut into word windows. Id ``<title>#<j>``, title = the article title.
``jsonl``
    one ``{"id": str|int, "title": str, "text": str}`` object per line (``title`` optional).
``tsv``
    one ``id <TAB> title <TAB> text`` line per passage (exactly three fields; title may be
    empty).

Blank lines are skipped in ``jsonl``/``tsv``; anything else that is malformed (invalid JSON,
missing or non-string fields, wrong field count, empty text, a repeated id) raises
:class:`~data_prep.common.CorpusError` naming the file and the 1-based line.

:func:`collection_key` fingerprints a collection (ids + titles + texts) so that caches of
derived data (passage embeddings of ``kid-retrieve --retriever dense``) are keyed by content,
never by file name alone.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import json
import logging
import os
import re
from argparse import ArgumentParser, Namespace
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from tqdm import tqdm

from informative_dialogue import text_io
from informative_dialogue.errors import CorpusError
from data_prep.common import one_line

logger = logging.getLogger(__name__)

FORMATS = ("auto", "cmu_dog", "wow_mini", "wiki_summaries", "jsonl", "tsv")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
_MOVIE_NAME = re.compile(r"^movie name: (.*?)\.(?: |$)")


@dataclass(frozen=True)
class Passage:
    """One retrievable unit of knowledge text."""

    id: str
    title: str
    text: str

    def retrieval_text(self) -> str:
        """What retrievers index: ``"title. text"`` (or the text alone without a title)."""
        return f"{self.title}. {self.text}" if self.title else self.text


# --------------------------------------------------------------------------------------------
# sources


def load_cmu_dog(path: str | os.PathLike) -> list[Passage]:
    """CMU_DoG documents: one passage per section (4 per movie), in (document, section) order."""
    from data_prep.corpora.cmu_dog_source import load_documents

    docs = load_documents(path)
    passages = []
    for doc_id in sorted(docs):
        sections = docs[doc_id]
        m = _MOVIE_NAME.match(sections.get("0", ""))
        title = m.group(1) if m else f"document {doc_id}"
        for sec in sorted(sections):
            if sections[sec].strip():
                passages.append(Passage(f"cmu_dog/{doc_id}/{sec}", title, sections[sec]))
    return passages


def load_wow_mini(folder: str | os.PathLike, splits: Sequence[str] = ("train", "valid", "test")) -> list[Passage]:
    """WoW mini knowledge sentences (``no_fact`` rows contribute nothing), deduplicated."""
    from data_prep.corpora.wow import read_sent_fact

    folder = os.fspath(folder)
    passages: list[Passage] = []
    seen: set[str] = set()
    found = 0
    for split in splits:
        path = os.path.join(folder, f"{split}.sent_fact.txt")
        if not os.path.exists(path):
            continue
        found += 1
        rows, _ = read_sent_fact(path)
        for idx in rows:
            for j, sent in enumerate(rows[idx][1] or []):
                if sent not in seen:
                    seen.add(sent)
                    passages.append(Passage(f"wow/{split}/{idx}/{j}", "", sent))
    if not found:
        raise CorpusError(folder, f"no {{{','.join(splits)}}}.sent_fact.txt files (WoW mini release)")
    return passages


def split_words(text: str, max_words: int) -> list[str]:
    """Cut ``text`` into chunks of at most ``max_words`` words, packing whole sentences
    greedily (a sentence is split only when it alone exceeds ``max_words``)."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    chunks: list[str] = []
    current: list[str] = []
    for sentence in _SENTENCE_END.split(one_line(text)):
        words = sentence.split()
        while len(words) > max_words:  # an over-long sentence: flush, then fixed windows
            if current:
                chunks.append(" ".join(current))
                current = []
            chunks.append(" ".join(words[:max_words]))
            words = words[max_words:]
        if current and len(current) + len(words) > max_words:
            chunks.append(" ".join(current))
            current = []
        current.extend(words)
    if current:
        chunks.append(" ".join(current))
    return chunks


def load_wiki_summaries(path: str | os.PathLike, max_words: int = 100) -> list[Passage]:
    """Wikipedia lead sections (``summaries_en.json.gz``) as passages of <= ``max_words`` words."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as raw:
            raise text_io.not_utf8_error(path, raw) from None  # names the line and column
    except OSError as exc:
        raise CorpusError(path, f"not a readable (gzipped) UTF-8 JSON file ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise CorpusError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from exc
    if not isinstance(data, dict):
        raise CorpusError(path, f"expected an object {{title: {{title, extract, ...}}}}, got {type(data).__name__}")
    passages = []
    for key, rec in tqdm(data.items(), desc="wiki summaries", unit="article", leave=False):
        if not isinstance(rec, dict) or not isinstance(rec.get("extract", ""), str):
            raise CorpusError(path, f"article {key!r}: expected an object with a string 'extract'")
        title = one_line(str(rec.get("title") or key))
        for j, chunk in enumerate(split_words(rec.get("extract") or "", max_words)):
            passages.append(Passage(f"{title}#{j}", title, chunk))
    return passages


def _text_lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file split on ``\\n`` only; a lone ``\\r`` or
    non-UTF-8 bytes are a CorpusError naming the line (:mod:`informative_dialogue.text_io`)."""
    return enumerate(text_io.iter_lines(path), 1)


def load_jsonl(path: str | os.PathLike) -> list[Passage]:
    """``{"id", "title", "text"}`` per line."""
    path = os.fspath(path)
    passages = []
    for line_no, line in _text_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", line_no) from exc
        if not isinstance(rec, dict):
            raise CorpusError(path, f"expected an object {{id, title, text}}, got {type(rec).__name__}", line_no)
        pid, title, text = rec.get("id"), rec.get("title", ""), rec.get("text")
        if isinstance(pid, bool) or not isinstance(pid, (str, int)) or str(pid) == "":
            raise CorpusError(path, f"'id' must be a non-empty string or an integer, got {pid!r}", line_no)
        if title is None:
            title = ""
        if not isinstance(title, str):
            raise CorpusError(path, f"'title' must be a string, got {type(title).__name__}", line_no)
        if not isinstance(text, str):
            raise CorpusError(path, f"'text' must be a string, got {type(text).__name__}", line_no)
        passages.append(_checked(path, line_no, str(pid), title, text))
    return passages


def load_tsv(path: str | os.PathLike) -> list[Passage]:
    """``id \\t title \\t text`` per line."""
    path = os.fspath(path)
    passages = []
    for line_no, line in _text_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise CorpusError(path, f"expected 3 tab-separated fields (id, title, text), got {len(fields)}", line_no)
        pid = fields[0].strip()
        if not pid:
            raise CorpusError(path, "empty id", line_no)
        passages.append(_checked(path, line_no, pid, fields[1], fields[2]))
    return passages


def _checked(path: str, line_no: int, pid: str, title: str, text: str) -> Passage:
    text = one_line(text)
    if not text:
        raise CorpusError(path, f"passage {pid!r}: empty text", line_no)
    return Passage(pid, one_line(title), text)


# --------------------------------------------------------------------------------------------
# dispatch


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format of ``path`` (see the module docstring); CorpusError if it cannot."""
    p = os.fspath(path)
    name = os.path.basename(p.rstrip("/")).lower()
    if os.path.isdir(p):
        if glob.glob(os.path.join(p, "*.sent_fact.txt")):
            return "wow_mini"
        return "cmu_dog"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "cmu_dog"
    if name.endswith((".json.gz", ".json")):
        return "wiki_summaries"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".tsv"):
        return "tsv"
    raise CorpusError(p, f"cannot tell the collection format from the name; give one of {FORMATS[1:]}")


def load_collection(path: str | os.PathLike, fmt: str = "auto", max_words: int = 100) -> list[Passage]:
    """Load a passage collection (``fmt`` one of :data:`FORMATS`); ids are checked unique."""
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "cmu_dog":
        passages = load_cmu_dog(path)
    elif fmt == "wow_mini":
        passages = load_wow_mini(path)
    elif fmt == "wiki_summaries":
        passages = load_wiki_summaries(path, max_words)
    elif fmt == "jsonl":
        passages = load_jsonl(path)
    elif fmt == "tsv":
        passages = load_tsv(path)
    else:
        raise ValueError(f"unknown collection format {fmt!r}; expected one of {FORMATS}")
    check_unique(passages, path, fmt)
    if not passages:
        raise CorpusError(path, "the collection holds no passages")
    logger.info("collection %s (%s): %d passages", os.fspath(path), fmt, len(passages))
    return passages


def check_unique(passages: Iterable[Passage], path: str | os.PathLike, fmt: str) -> None:
    """CorpusError on a repeated id (for ``jsonl``/``tsv`` with the line, counting blank lines
    as the loaders do)."""
    first: dict[str, int] = {}
    for n, p in enumerate(passages):
        if p.id in first:
            line = _line_of_nth(os.fspath(path), n) if fmt in ("jsonl", "tsv") else None
            raise CorpusError(path, f"passage id {p.id!r} repeated (first as passage {first[p.id] + 1})", line)
        first[p.id] = n


def _line_of_nth(path: str, n: int) -> int | None:
    """1-based line of the n-th (0-based) non-blank line of a text file."""
    k = -1
    for line_no, line in _text_lines(path):
        if line.strip():
            k += 1
            if k == n:
                return line_no
    return None


def collection_key(passages: Sequence[Passage]) -> str:
    """A 16-hex-digit fingerprint of the collection's content (ids, titles, texts, order)."""
    h = hashlib.sha1()
    for p in passages:
        for part in (p.id, p.title, p.text):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
        h.update(b"\x01")
    return h.hexdigest()[:16]


def index_by_id(passages: Sequence[Passage]) -> dict[str, Passage]:
    """``id -> passage``."""
    return {p.id: p for p in passages}


def add_collection_arguments(parser: ArgumentParser) -> None:
    """``--collection``, ``--collection-format``, ``--max-words`` (shared by the KID commands)."""
    parser.add_argument("--collection", required=True, help="passage collection (see data_prep.kid.collection)")
    parser.add_argument("--collection-format", choices=FORMATS, default="auto")
    parser.add_argument("--max-words", type=int, default=100, help="passage length for wiki_summaries (words)")


def collection_from_args(args: Namespace) -> list[Passage]:
    """The collection named by :func:`add_collection_arguments`' flags."""
    return load_collection(args.collection, args.collection_format, args.max_words)
