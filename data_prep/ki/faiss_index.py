"""The faiss side of the knowledge index of knowledge internalization (KI, paper §4.3):
building the inner-product index over f(g(K)) whose ids are the knowledge item ids.

Exact ``IndexIDMap(IndexFlatIP)`` by default; ``ivf`` (or ``auto`` beyond ``ivf_threshold``
items, default 1,000,000) builds an ``IndexIVFFlat`` (inner product, ``nlist`` ≈ 4·sqrt(N),
trained on a seeded sample of up to 64·nlist vectors). GPU faiss is used
(``faiss.get_num_gpus() > 0``) for IVF training and, in the miner, for search unless
``--gpu no``; every code path also runs on the CPU build. The index directory that holds the
index is described in :mod:`data_prep.ki.index`.
"""
from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "ivf", "auto")
DEFAULT_IVF_THRESHOLD = 1_000_000


def resolve_index_type(index_type: str, n_items: int, ivf_threshold: int = DEFAULT_IVF_THRESHOLD) -> str:
    """``flat`` / ``ivf`` unchanged; ``auto`` → ``ivf`` when ``n_items > ivf_threshold``."""
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {INDEX_TYPES}, got {index_type!r}")
    if index_type == "auto":
        return "ivf" if n_items > ivf_threshold else "flat"
    return index_type


def default_nlist(n_items: int) -> int:
    """≈ 4·sqrt(N) inverted lists, at least 1 and at most N."""
    return max(1, min(n_items, int(round(4 * math.sqrt(n_items)))))


def use_gpu(gpu: str) -> bool:
    """``gpu`` is ``auto`` (use GPUs when faiss sees any) or ``no``."""
    if gpu not in ("auto", "no"):
        raise ValueError(f"--gpu must be 'auto' or 'no', got {gpu!r}")
    import faiss

    return gpu == "auto" and faiss.get_num_gpus() > 0


def build_faiss_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    index_type: str = "flat",
    nlist: int | None = None,
    seed: int = 1,
    gpu: str = "no",
    add_chunk: int = 262_144,
):
    """A CPU faiss inner-product index over ``vectors`` float32 ``(N, d)`` whose search
    returns ``ids`` int64 ``(N,)``.

    ``flat``: ``IndexIDMap(IndexFlatIP)`` (exact). ``ivf``: ``IndexIVFFlat`` with ``nlist``
    lists (default :func:`default_nlist`) trained on a seeded sample of ≤ 64·nlist rows
    (on GPU when ``gpu='auto'`` and one is visible)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or ids.shape != (vectors.shape[0],):
        raise ValueError(f"vectors (N, d) and ids (N,) expected, got {vectors.shape} and {ids.shape}")
    n, d = vectors.shape
    if index_type == "flat":
        index = faiss.IndexIDMap(faiss.IndexFlatIP(d))
    elif index_type == "ivf":
        nlist = nlist or default_nlist(n)
        if nlist > n:
            raise ValueError(f"nlist={nlist} exceeds the number of items {n}")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample_n = min(n, 64 * nlist)
        sample = vectors[np.sort(rng.choice(n, size=sample_n, replace=False))]
        logger.info("training IVF (nlist=%d) on %d vectors", nlist, sample_n)
        if use_gpu(gpu):
            gpu_index = faiss.index_cpu_to_all_gpus(index)
            gpu_index.train(sample)
            index = faiss.index_gpu_to_cpu(gpu_index)
        else:
            index.train(sample)
    else:
        raise ValueError(f"index type must be 'flat' or 'ivf', got {index_type!r}")
    for start in range(0, n, add_chunk):
        index.add_with_ids(vectors[start : start + add_chunk], ids[start : start + add_chunk])
    return index
