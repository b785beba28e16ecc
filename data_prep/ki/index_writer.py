"""Writing a knowledge index directory of knowledge internalization (KI, paper §4.3): encode
every knowledge item once into the frozen table g(K) and its projection f(g(K)), build the
faiss index over f(g(K)) and write ``knowledge_table.npy``, ``knowledge_proj.npy``,
``index.faiss`` and ``meta.json`` (the layout is described in :mod:`data_prep.ki.index`).

The pure core (:func:`encode_in_chunks`, :func:`data_prep.ki.faiss_index.build_faiss_index`,
:func:`write_index_dir`) takes an injected ``encode_fn(texts) -> (g, fg)``; the CLI
(:mod:`data_prep.ki.encode_knowledge`) wires in
``data_prep.ki.retriever.TokenKnowledgeRetriever.encode_knowledge``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from data_prep.ki.faiss_index import DEFAULT_IVF_THRESHOLD, build_faiss_index, default_nlist, resolve_index_type
from data_prep.ki.index import INDEX_FILE, META_FILE, PROJ_FILE, TABLE_FILE

logger = logging.getLogger(__name__)

EncodeFn = Callable[[Sequence[str]], "tuple[np.ndarray, np.ndarray]"]


def encode_in_chunks(
    texts: Sequence[str],
    encode_fn: EncodeFn,
    table_out: np.ndarray,
    proj_out: np.ndarray,
    chunk_size: int = 8192,
    progress: bool = True,
) -> None:
    """Fill ``table_out[1:]`` (``(N + 1, hidden)``, row 0 set to zeros) with g(K) and
    ``proj_out`` (``(N, projection_dim)``) with f(g(K)) by calling ``encode_fn`` on chunks of
    ``texts`` (length N). The outputs may be memory-mapped ``.npy`` files."""
    n = len(texts)
    if table_out.shape[0] != n + 1 or proj_out.shape[0] != n:
        raise ValueError(f"table rows {table_out.shape[0]} / projection rows {proj_out.shape[0]} do not fit {n} texts")
    table_out[0] = 0
    with tqdm(total=n, desc="encode knowledge", unit="item", disable=not progress) as bar:
        for start in range(0, n, chunk_size):
            chunk = list(texts[start : start + chunk_size])
            g, fg = encode_fn(chunk)
            if g.shape != (len(chunk), table_out.shape[1]) or fg.shape != (len(chunk), proj_out.shape[1]):
                raise ValueError(
                    f"encoder returned {g.shape} / {fg.shape} for {len(chunk)} texts, expected "
                    f"({len(chunk)}, {table_out.shape[1]}) / ({len(chunk)}, {proj_out.shape[1]})"
                )
            if not (np.isfinite(g).all() and np.isfinite(fg).all()):
                raise ValueError(f"encoder returned non-finite values for items {start + 1}..{start + len(chunk)}")
            table_out[start + 1 : start + 1 + len(chunk)] = g
            proj_out[start : start + len(chunk)] = fg
            bar.update(len(chunk))


def write_index_dir(
    out_dir: str | os.PathLike,
    texts: Sequence[str],
    ids: np.ndarray,
    encode_fn: EncodeFn,
    hidden_size: int,
    projection_dim: int,
    knowledge_base: dict | None = None,
    retriever: dict | None = None,
    index_type: str = "flat",
    nlist: int | None = None,
    ivf_threshold: int = DEFAULT_IVF_THRESHOLD,
    table_dtype: str = "float32",
    chunk_size: int = 8192,
    gpu: str = "no",
    seed: int = 1,
    progress: bool = True,
) -> dict:
    """Encode ``texts`` (item ``ids[j]`` = ``texts[j]``; ids must be 1..N in order) and write
    ``knowledge_table.npy``, ``knowledge_proj.npy``, ``index.faiss`` and ``meta.json`` under
    ``out_dir``. Returns the meta dict (with timings)."""
    import faiss

    ids = np.asarray(ids, dtype=np.int64)
    n = len(texts)
    if ids.shape != (n,) or not np.array_equal(ids, np.arange(1, n + 1, dtype=np.int64)):
        raise ValueError("knowledge item ids must be 1..N in order (row i of the table is item i)")
    if n == 0:
        raise ValueError("the knowledge base is empty")
    if table_dtype not in ("float32", "float16"):
        raise ValueError(f"table dtype must be float32 or float16, got {table_dtype!r}")
    kind = resolve_index_type(index_type, n, ivf_threshold)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    table = np.lib.format.open_memmap(
        os.path.join(out_dir, TABLE_FILE + ".tmp"), mode="w+", dtype=np.dtype(table_dtype), shape=(n + 1, hidden_size)
    )
    proj = np.lib.format.open_memmap(
        os.path.join(out_dir, PROJ_FILE + ".tmp"), mode="w+", dtype=np.float32, shape=(n, projection_dim)
    )
    t0 = time.perf_counter()
    encode_in_chunks(texts, encode_fn, table, proj, chunk_size=chunk_size, progress=progress)
    encode_s = time.perf_counter() - t0
    table.flush()
    proj.flush()
    t1 = time.perf_counter()
    index = build_faiss_index(np.asarray(proj), ids, kind, nlist=nlist, seed=seed, gpu=gpu)
    index_s = time.perf_counter() - t1
    faiss.write_index(index, os.path.join(out_dir, INDEX_FILE + ".tmp"))
    del table, proj
    for name in (TABLE_FILE, PROJ_FILE, INDEX_FILE):
        os.replace(os.path.join(out_dir, name + ".tmp"), os.path.join(out_dir, name))
    meta = {
        "n_items": n,
        "hidden_size": hidden_size,
        "projection_dim": projection_dim,
        "index_type": kind,
        "nlist": (nlist or default_nlist(n)) if kind == "ivf" else None,
        "metric": "inner_product",
        "table_dtype": table_dtype,
        "table_rows": n + 1,
        "row0": "zeros (no knowledge)",
        "knowledge_base": knowledge_base,
        "retriever": retriever,
        "encode_seconds": round(encode_s, 3),
        "encode_items_per_second": round(n / encode_s, 2) if encode_s > 0 else None,
        "index_seconds": round(index_s, 3),
    }
    with open(os.path.join(out_dir, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    logger.info("encoded %d items in %.1fs (%.1f items/s); %s index in %.1fs -> %s", n, encode_s, n / max(encode_s, 1e-9), kind, index_s, out_dir)
    return meta
