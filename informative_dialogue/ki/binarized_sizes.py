"""Token counts of a split's binarised source, as fairseq-preprocess wrote it (no fairseq import
for the default ``mmap`` format).

The knowledge alignments are checked against these counts (``ki-binarize-alignments`` before
training, the ``knowledge_dialog`` task when it loads a split): line i of the alignments must
label exactly ``sizes[i] - 1`` tokens (fairseq appends EOS).

fairseq's ``mmap`` index file (``{prefix}.idx``, ``fairseq.data.indexed_dataset``) is read with
numpy: the 9-byte magic ``MMIDIDX\\x00\\x00``, version ``<Q`` (1), dtype code ``<B``, the number
of examples ``<Q``, then the sizes, int32 (n,), and the pointers. Any other
``--dataset-impl`` is read through fairseq's own loader, imported only then.
"""
from __future__ import annotations

import os
import struct

import numpy as np

MMAP_MAGIC = b"MMIDIDX\x00\x00"


def read_mmap_sizes(prefix: str | os.PathLike) -> np.ndarray:
    """Sizes (n,) int64 of the mmap-format dataset ``prefix`` (``prefix.idx`` / ``prefix.bin``).

    Raises:
        ValueError: the index file is not fairseq's mmap format (names the file)."""
    path = os.fspath(prefix) + ".idx"
    with open(path, "rb") as f:
        magic = f.read(len(MMAP_MAGIC))
        if magic != MMAP_MAGIC:
            raise ValueError(f"{path}: not a fairseq mmap index (magic {magic!r}, expected {MMAP_MAGIC!r})")
        (version,) = struct.unpack("<Q", f.read(8))
        if version != 1:
            raise ValueError(f"{path}: mmap index version {version}, expected 1")
        f.read(1)  # dtype code of the token ids: not needed for the sizes
        (length,) = struct.unpack("<Q", f.read(8))
        sizes = np.fromfile(f, dtype=np.int32, count=length)
    if sizes.size != length:
        raise ValueError(f"{path}: truncated: {sizes.size} of {length} sizes")
    return sizes.astype(np.int64)


def binarized_source_sizes(
    data_path: str, split: str, src: str, tgt: str, dataset_impl: str | None = None
) -> tuple[str, np.ndarray] | None:
    """``(prefix, sizes)`` of the binarised source of ``split`` in ``data_path``
    (``{split}.{src}-{tgt}.{src}`` or ``{split}.{tgt}-{src}.{src}``; sizes (n,) int64, EOS
    included, before any truncation), or None when neither exists.

    An mmap index (fairseq-preprocess's default) is read here when ``dataset_impl`` is None or
    ``"mmap"``; any other format is loaded with fairseq's ``data_utils.load_indexed_dataset``
    (which infers the format when ``dataset_impl`` is None)."""
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        prefix = os.path.join(data_path, f"{split}.{pair}.{src}")
        if dataset_impl in (None, "mmap") and is_mmap_index(prefix):
            return prefix, read_mmap_sizes(prefix)
        if dataset_impl == "mmap":
            continue
        from fairseq.data import data_utils  # other formats: fairseq's own reader

        dataset = data_utils.load_indexed_dataset(prefix, None, dataset_impl)
        if dataset is not None:
            # a copy: fairseq's sizes are a view of an mmap closed when `dataset` is freed
            return prefix, np.array(dataset.sizes, dtype=np.int64)
    return None


def is_mmap_index(prefix: str | os.PathLike) -> bool:
    """Whether ``prefix.idx`` and ``prefix.bin`` exist and the index is fairseq's mmap format."""
    path = os.fspath(prefix)
    if not (os.path.isfile(path + ".idx") and os.path.isfile(path + ".bin")):
        return False
    with open(path + ".idx", "rb") as f:
        return f.read(len(MMAP_MAGIC)) == MMAP_MAGIC
