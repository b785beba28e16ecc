"""Triples of retrieved passages for ``kid-build-trie``, each distinct passage parsed at most
once, with an optional on-disk cache (``--triples-cache FILE.jsonl``) kept across runs and
shared by the shards of one run.

Cache lines: ``{"id": passage id, "hash": 16 hex digits of sha1(text), "triples": [[s, r, o],
...]}``; a line is used only when its passage is in the collection with the same text hash.
New lines are appended in one block under an exclusive ``flock`` (shards running at the same
time on one machine may share the file). A last line without its ``\\n`` (a run killed while
appending) is ignored when reading and cut off before the next append; any other malformed
line is a :class:`CorpusError` naming the file and line.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
from typing import Any, Optional, Sequence

from informative_dialogue import text_io
from informative_dialogue.errors import CorpusError
from data_prep.kid.collection import Passage
from data_prep.kid.triples import Triple, extract_triples_batch

logger = logging.getLogger(__name__)


def text_hash(p: Passage) -> str:
    """16 hex digits of sha1 of the passage text (the cache key beside the id)."""
    return hashlib.sha1(p.text.encode("utf-8")).hexdigest()[:16]


def load_triples_cache(cache_path: str, passages: dict[str, Passage]) -> dict[str, list[Triple]]:
    """``id -> triples`` of the cache lines whose passage (same id and text hash) is in
    ``passages``; ``{}`` when the file does not exist."""
    triples: dict[str, list[Triple]] = {}
    if not os.path.exists(cache_path):
        return triples
    with open(cache_path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        keep = _complete_prefix(f, size)
        f.seek(0)
        data = f.read(keep)
    if keep != size:
        logger.warning("%s: last line has no newline (an interrupted write): ignored", cache_path)
    lines = text_io.iter_stream_lines(io.BytesIO(data), cache_path)
    for line_no, raw in enumerate(lines, 1):
        try:
            rec = json.loads(raw)
            pid, h, trs = rec["id"], rec["hash"], rec["triples"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CorpusError(cache_path, f"bad triples-cache line ({exc}); delete the file", line_no) from exc
        p = passages.get(pid)
        if p is not None and text_hash(p) == h:
            triples[pid] = [tuple(t) for t in trs]  # type: ignore[misc]
    return triples


def _complete_prefix(f: Any, size: int, block: int = 1 << 16) -> int:
    """Bytes of an open binary file up to and including its last ``\n`` (0 if none)."""
    end = size
    while end > 0:
        start = max(end - block, 0)
        f.seek(start)
        cut = f.read(end - start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def append_triples_cache(cache_path: str, records: Sequence[dict]) -> None:
    """Append ``records`` (one JSON line each) in one locked, flushed write, after cutting off
    an unterminated last line."""
    block = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with open(cache_path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            size = f.seek(0, os.SEEK_END)
            keep = _complete_prefix(f, size)
            if keep != size:
                logger.warning("%s: cutting an unterminated last line (%d bytes)", cache_path, size - keep)
                f.truncate(keep)
            f.write(block)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def parse_missing(
    ids: Sequence[str],
    passages: dict[str, Passage],
    nlp: Any,
    known: dict[str, list[Triple]],
    cache_path: Optional[str] = None,
    batch_size: int = 32,
) -> int:
    """Parse the passages of ``ids`` that are not in ``known`` (added to it, and appended to
    ``cache_path``); returns how many were parsed."""
    todo = [pid for pid in dict.fromkeys(ids) if pid not in known]
    if not todo:
        return 0
    parsed = extract_triples_batch([passages[p].text for p in todo], nlp, batch_size=batch_size, desc="parse passages")
    for pid, trs in zip(todo, parsed):
        known[pid] = trs
    if cache_path:
        append_triples_cache(cache_path, [{"id": pid, "hash": text_hash(passages[pid]), "triples": trs} for pid, trs in zip(todo, parsed)])
    return len(todo)


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
    known = load_triples_cache(cache_path, passages) if cache_path else {}
    if cache_path:
        logger.info("triples cache %s: %d of %d passages found", cache_path, sum(p in known for p in wanted), len(wanted))
    n = parse_missing(wanted, passages, nlp, known, cache_path, batch_size)
    return {pid: known[pid] for pid in wanted}, n
