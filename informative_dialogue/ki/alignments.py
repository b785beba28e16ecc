"""Binary token-knowledge alignments: one array of knowledge ids per source line (no fairseq).

On disk, beside fairseq's binarised data (``data-bin/``), a split's alignments are two ``.npy``
files (``np.save``, so the dtype and shape are in the header)::

    {prefix}.ids.npy      all lines' ids concatenated, shape (total,); int32, or int64 when the
                          largest id exceeds 2**31 - 1 (ids are never narrowed below 32 bits:
                          the knowledge-internalization release stored uint16, which wraps
                          knowledge ids above 65,535)
    {prefix}.offsets.npy  int64, shape (n_lines + 1,); line i is ids[offsets[i]:offsets[i+1]]

with ``prefix = data-bin/{split}.align``. Line i labels the i-th source line token by token
(``0`` = no knowledge); the binarised source has one more token, the EOS fairseq appends.

Write with :func:`write_knowledge_alignments` (``ki-binarize-alignments`` validates first), read
with :meth:`KnowledgeAlignments.load` (memory-mapped).
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from informative_dialogue.text_io import OutputSet

IDS_SUFFIX = ".ids.npy"
OFFSETS_SUFFIX = ".offsets.npy"
INT32_MAX = np.iinfo(np.int32).max


def alignment_paths(prefix: str | os.PathLike) -> tuple[str, str]:
    """``(ids_path, offsets_path)`` of the alignments stored under ``prefix``."""
    prefix = os.fspath(prefix)
    return prefix + IDS_SUFFIX, prefix + OFFSETS_SUFFIX


def alignments_exist(prefix: str | os.PathLike) -> bool:
    """Whether both files of ``prefix`` exist."""
    return all(os.path.isfile(p) for p in alignment_paths(prefix))


def ids_dtype(max_id: int) -> np.dtype:
    """``int32`` when every id fits, else ``int64``."""
    return np.dtype(np.int32) if max_id <= INT32_MAX else np.dtype(np.int64)


def write_knowledge_alignments(prefix: str | os.PathLike, rows: Iterable[Sequence[int] | np.ndarray]) -> dict:
    """Write ``rows`` (one 1-D sequence of non-negative integer ids per source line) under
    ``prefix``. No validation against a source: callers check that first.

    Returns ``{"lines", "ids", "max_id", "dtype", "ids_path", "offsets_path"}``."""
    return KnowledgeAlignments.from_rows(rows, path=os.fspath(prefix) + IDS_SUFFIX).save(prefix)


class KnowledgeAlignments:
    """Memory-mapped alignments of one split: ``alignments[i]`` = ids of source line ``i``.

    Args:
        ids: flat ids, shape (total,), int32 or int64.
        offsets: int64, shape (n + 1,), non-decreasing from 0 to ``total``.
        path: used in error messages.
    """

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, path: str = "<alignments>"):
        self.path = path
        if ids.ndim != 1 or ids.dtype not in (np.dtype(np.int32), np.dtype(np.int64)):
            raise ValueError(f"{path}: ids must be a 1-D int32/int64 array, got {ids.dtype} shape {ids.shape}")
        if offsets.ndim != 1 or offsets.dtype != np.dtype(np.int64) or offsets.size < 1:
            raise ValueError(f"{path}: offsets must be a non-empty 1-D int64 array, got {offsets.dtype} "
                             f"shape {offsets.shape}")
        if offsets[0] != 0 or offsets[-1] != ids.size:
            raise ValueError(f"{path}: offsets must run from 0 to the number of ids ({ids.size}), "
                             f"got {int(offsets[0])}..{int(offsets[-1])}")
        self.sizes: np.ndarray = np.diff(offsets).astype(np.int64)  # (n,)
        if (self.sizes < 0).any():
            bad = int(np.argmax(self.sizes < 0))
            raise ValueError(f"{path}: offsets decrease at line {bad + 1}")
        self.ids = ids
        self.offsets = offsets
        self._prefix: str | None = None  # set by load(): pickling then re-maps instead of copying

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self._prefix is not None:  # DataLoader workers re-open the map, not a copy of all ids
            del state["ids"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "ids" not in state:
            self.ids = np.load(alignment_paths(self._prefix)[0], mmap_mode="r", allow_pickle=False)

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[int] | np.ndarray], path: str = "<alignments>") -> "KnowledgeAlignments":
        """In-memory alignments from one id sequence per line (ids stored as :func:`ids_dtype`).

        Raises ValueError naming ``path`` and the 1-based line of a negative id."""
        arrays = [np.asarray(r, dtype=np.int64).reshape(-1) for r in rows]
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([a.size for a in arrays], out=offsets[1:])
        flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        if flat.size and flat.min() < 0:
            line = int(np.searchsorted(offsets, int(np.argmax(flat < 0)), side="right"))
            raise ValueError(f"{path}:{line}: negative knowledge id")
        max_id = int(flat.max()) if flat.size else 0
        return cls(flat.astype(ids_dtype(max_id)), offsets, path=path)

    def save(self, prefix: str | os.PathLike) -> dict:
        """Write ``{prefix}.ids.npy`` and ``{prefix}.offsets.npy``, both or neither (a failure
        leaves earlier files as they were); returns a summary
        ``{"lines", "ids", "max_id", "dtype", "ids_path", "offsets_path"}``."""
        ids_path, offsets_path = alignment_paths(prefix)
        with OutputSet() as out:
            for path, array in ((ids_path, self.ids), (offsets_path, self.offsets)):
                with open(out.path(path), "wb") as f:  # a file object: np.save adds no ".npy"
                    np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        return {
            "lines": len(self),
            "ids": int(self.ids.size),
            "max_id": self.max_id,
            "dtype": self.ids.dtype.name,
            "ids_path": ids_path,
            "offsets_path": offsets_path,
        }

    @classmethod
    def load(cls, prefix: str | os.PathLike) -> "KnowledgeAlignments":
        """Memory-map ``{prefix}.ids.npy`` and ``{prefix}.offsets.npy``."""
        ids_path, offsets_path = alignment_paths(prefix)
        for p in (ids_path, offsets_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"knowledge alignments not found: {p} (write them with ki-binarize-alignments)")
        ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
        offsets = np.asarray(np.load(offsets_path, allow_pickle=False))
        alignments = cls(ids, offsets, path=ids_path)
        alignments._prefix = os.fspath(prefix)
        return alignments

    def __len__(self) -> int:
        return int(self.sizes.size)

    def __getitem__(self, index: int) -> np.ndarray:
        """Ids of line ``index`` (0-based) as a fresh ``int64`` array ``(sizes[index],)``."""
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return np.array(self.ids[start:end], dtype=np.int64)

    @property
    def max_id(self) -> int:
        return int(self.ids.max()) if self.ids.size else 0

    def validate_against_source(
        self, source_sizes: np.ndarray, path_for_errors: str | os.PathLike | None = None, eos_appended: bool = True
    ) -> None:
        """Check one id per source token, line by line.

        Args:
            source_sizes: int, shape (n,): tokens per binarised source line (fairseq's
                ``dataset.sizes``, EOS included when ``eos_appended``).
            path_for_errors: the alignment file named in errors (default: the ids file).
            eos_appended: the source sizes count an EOS that has no knowledge id.

        Raises:
            ValueError: naming the file, the 1-based line, the alignment count and the source
                token count, at the first line that differs (or when the line counts differ).
        """
        path = os.fspath(path_for_errors) if path_for_errors is not None else self.path
        source_sizes = np.asarray(source_sizes, dtype=np.int64).reshape(-1)
        if source_sizes.size != len(self):
            raise ValueError(f"{path}: {len(self)} alignment lines but the source has {source_sizes.size} lines")
        expected = source_sizes - 1 if eos_appended else source_sizes
        bad = np.flatnonzero(self.sizes != expected)
        if bad.size:
            i = int(bad[0])
            eos_note = " (+ EOS)" if eos_appended else ""
            raise ValueError(
                f"{path}:{i + 1}: line {i + 1} has {int(self.sizes[i])} knowledge ids but the source line has "
                f"{int(expected[i])} tokens{eos_note}; expected one id per source token "
                f"({bad.size} mismatched line(s) in all)"
            )
