"""Read-only access to a CMU_DoG download (tarball or folder) and its 30 Wikipedia movie
documents: ``CmuDogSource`` and ``load_documents`` (doc id -> section id -> one-line text).
Section 0 (the movie card, a JSON object) is rendered as readable text by ``section0_text``."""
from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from typing import Any

from tqdm import tqdm

from informative_dialogue.errors import CorpusError
from data_prep.common import one_line

logger = logging.getLogger(__name__)

SECTIONS = ("0", "1", "2", "3")
# Section 0 fields in reading order: (JSON key, label, joiner for list values).
SECTION0_FIELDS = (
    ("movieName", "movie name", ", "),
    ("year", "year", ", "),
    ("director", "director", ", "),
    ("genre", "genre", ", "),
    ("rating", "rating", ", "),
    ("cast", "cast", ", "),
    ("introduction", "introduction", " "),
    ("critical_response", "critical response", " "),
)
_MEMBER_RE = re.compile(r"^(?:(?P<root>.*)/)?(?P<rel>(?:Conversations/[^/]+|WikiData)/[^/]+\.json)$")


# --------------------------------------------------------------------------------------------
# input access: tarball or directory


class CmuDogSource:
    """Read-only view of a CMU_DoG download: a ``.tar(.gz)`` archive or a directory.

    Paths are relative to the root that holds ``Conversations/`` and ``WikiData/``
    (e.g. ``Conversations/train/x.json``). The archive is read in one pass into memory
    (35 MB uncompressed).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._members: dict[str, bytes] | None = None
        self._root: str | None = None
        if os.path.isdir(self.path):
            self._root = self._find_root(self.path)
        elif os.path.isfile(self.path):
            self._members = self._read_archive(self.path)
        else:
            raise FileNotFoundError(f"{self.path}: no such file or directory")

    @staticmethod
    def _find_root(path: str) -> str:
        def is_root(p: str) -> bool:
            return os.path.isdir(os.path.join(p, "Conversations")) or os.path.isdir(os.path.join(p, "WikiData"))

        if is_root(path):
            return path
        subdirs = [os.path.join(path, d) for d in sorted(os.listdir(path))]
        roots = [d for d in subdirs if os.path.isdir(d) and is_root(d)]
        if len(roots) != 1:
            raise CorpusError(
                path,
                "expected Conversations/ and WikiData/ here or in exactly one sub-directory "
                f"(found {len(roots)} candidate roots)",
            )
        return roots[0]

    @staticmethod
    def _read_archive(path: str) -> dict[str, bytes]:
        members: dict[str, bytes] = {}
        roots: set[str] = set()
        try:
            with tarfile.open(path, "r:*") as tar:
                for info in tqdm(tar, desc=f"read {os.path.basename(path)}", unit="file", leave=False):
                    if not info.isfile():
                        continue
                    m = _MEMBER_RE.match(info.name)
                    if not m:
                        continue
                    roots.add(m.group("root") or "")
                    f = tar.extractfile(info)
                    assert f is not None  # regular file
                    members[m.group("rel")] = f.read()
        except tarfile.TarError as exc:
            raise CorpusError(path, f"not a readable tar archive ({exc})") from exc
        if len(roots) > 1:
            raise CorpusError(path, f"the archive holds several CMU_DoG roots: {sorted(roots)}")
        if not members:
            raise CorpusError(path, "no Conversations/<split>/*.json or WikiData/*.json members in the archive")
        return members

    def list(self, folder: str) -> list[str]:
        """Sorted relative paths of the ``*.json`` files directly under ``folder``."""
        if self._members is not None:
            prefix = folder.rstrip("/") + "/"
            return sorted(
                n for n in self._members if n.startswith(prefix) and "/" not in n[len(prefix):]
            )
        assert self._root is not None
        full = os.path.join(self._root, folder)
        if not os.path.isdir(full):
            return []
        return sorted(
            f"{folder}/{n}" for n in os.listdir(full) if n.endswith(".json") and os.path.isfile(os.path.join(full, n))
        )

    def describe(self, rel: str) -> str:
        """How error messages name a file: ``archive[member]`` or a filesystem path."""
        if self._members is not None:
            return f"{self.path}[{rel}]"
        assert self._root is not None
        return os.path.join(self._root, rel)

    def load_json(self, rel: str) -> Any:
        """Parse one JSON file; CorpusError (with the line) if it is not valid UTF-8 JSON."""
        if self._members is not None:
            raw = self._members[rel]
        else:
            assert self._root is not None
            with open(os.path.join(self._root, rel), "rb") as f:
                raw = f.read()
        where = self.describe(rel)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise CorpusError(where, f"not UTF-8 text ({exc})") from exc
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise CorpusError(where, f"invalid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from exc


# --------------------------------------------------------------------------------------------
# documents


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field_text(value: Any, joiner: str, where: str, key: str) -> str:
    if isinstance(value, str):
        return one_line(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return joiner.join(t for t in (one_line(v) for v in value) if t)
    raise CorpusError(where, f"key {key!r}: expected a string or a list of strings, got {type(value).__name__}")


def section0_text(section: dict, where: str = "<section 0>") -> str:
    """Render the movie-card section (a dict) as readable text:
    ``"movie name: X. year: Y. ... critical response: ..."``. Known fields come in a fixed
    order, any others after them (sorted, ``_`` read as a space); empty fields are left out."""
    parts: list[str] = []
    known = {key for key, _, _ in SECTION0_FIELDS}
    fields = list(SECTION0_FIELDS) + [(k, k.replace("_", " "), ", ") for k in sorted(section) if k not in known]
    for key, label, joiner in fields:
        if key not in section:
            continue
        text = _field_text(section[key], joiner, where, f"0.{key}")
        if not text:
            continue
        if text[-1] not in ".!?":
            text += "."
        parts.append(f"{label}: {text}")
    return " ".join(parts)


def _parse_document(doc: Any, where: str) -> tuple[int, dict[str, str]]:
    if not isinstance(doc, dict):
        raise CorpusError(where, f"expected a JSON object (a wiki document), got {type(doc).__name__}")
    if "wikiDocumentIdx" not in doc:
        raise CorpusError(where, "missing key 'wikiDocumentIdx'")
    doc_id = doc["wikiDocumentIdx"]
    if not is_int(doc_id):
        raise CorpusError(where, f"key 'wikiDocumentIdx': expected an integer, got {doc_id!r}")
    sections: dict[str, str] = {}
    for sec in SECTIONS:
        if sec not in doc:
            raise CorpusError(where, f"missing key {sec!r} (expected sections '0'..'3')")
        value = doc[sec]
        if sec == "0":
            if not isinstance(value, dict):
                raise CorpusError(where, f"key '0': expected an object (movie card), got {type(value).__name__}")
            sections[sec] = section0_text(value, where)
        else:
            if not isinstance(value, str):
                raise CorpusError(where, f"key {sec!r}: expected a string, got {type(value).__name__}")
            sections[sec] = one_line(value)
    return doc_id, sections


def documents_of(source: CmuDogSource) -> dict[int, dict[str, str]]:
    """The documents of an opened source (see :func:`load_documents`)."""
    files = source.list("WikiData")
    if not files:
        raise CorpusError(source.path, "no WikiData/*.json documents found")
    docs: dict[int, dict[str, str]] = {}
    origin: dict[int, str] = {}
    for rel in files:
        where = source.describe(rel)
        doc_id, sections = _parse_document(source.load_json(rel), where)
        if doc_id in docs:
            raise CorpusError(where, f"wikiDocumentIdx {doc_id} already used by {origin[doc_id]}")
        docs[doc_id] = sections
        origin[doc_id] = where
    return docs


def load_documents(input: str | os.PathLike) -> dict[int, dict[str, str]]:
    """The CMU_DoG movie documents: ``wikiDocumentIdx -> {"0".."3": section text}``.

    ``input`` is the tarball or the directory (as for ``prepare-cmu-dog --input``). Section
    "0" (the movie card) is rendered by :func:`section0_text`; all text is whitespace-
    normalised to one line, not lower-cased.
    """
    return documents_of(CmuDogSource(input))
