"""Encode a knowledge base once for knowledge internalization (KI, paper §4.3): the frozen
knowledge-embedding table g(K) and a faiss inner-product index over f(g(K)).

Output directory (``--out INDEX_DIR``):

- ``knowledge_table.npy``: g(K), shape ``(N + 1, hidden)``; row 0 is all zeros ("no
  knowledge"), row ``i`` is knowledge item id ``i`` (ids are 1..N). float32, or float16 with
  ``--table-dtype float16``. The KI criterion reads this table.
- ``knowledge_proj.npy``: f(g(K)) float32 ``(N, projection_dim)`` (row ``i - 1`` = id ``i``),
  kept so the index can be rebuilt with other settings without re-encoding.
- ``index.faiss``: the index over f(g(K)) with faiss ids = item ids (int64). Exact
  ``IndexIDMap(IndexFlatIP)`` by default; ``--index ivf`` (or ``auto`` beyond
  ``--ivf-threshold`` items, default 1,000,000) builds an ``IndexIVFFlat`` (inner product,
  ``nlist`` ≈ 4·sqrt(N), trained on a seeded sample of up to 64·nlist vectors).
- ``meta.json``: N, dimensions, index type, the knowledge base's path and the size, mtime and
  sha256 of its ``items.tsv``, and the retriever's path and content hash, so that a miner run
  against another knowledge base or retriever is refused (:func:`check_index_matches`).

The pure core (:func:`encode_in_chunks`, :func:`build_faiss_index`, :func:`write_index_dir`)
takes an injected ``encode_fn(texts) -> (g, fg)``; the CLI wires in
``data_prep.ki.retriever.TokenKnowledgeRetriever.encode_knowledge``.
GPU faiss is used (``faiss.get_num_gpus() > 0``) for IVF training and, in the miner, for
search unless ``--gpu no``; every code path also runs on the CPU build.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import time
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from informative_dialogue.cli import setup_logging, console_script

logger = logging.getLogger(__name__)

TABLE_FILE = "knowledge_table.npy"
PROJ_FILE = "knowledge_proj.npy"
INDEX_FILE = "index.faiss"
META_FILE = "meta.json"
INDEX_TYPES = ("flat", "ivf", "auto")
DEFAULT_IVF_THRESHOLD = 1_000_000

EncodeFn = Callable[[Sequence[str]], "tuple[np.ndarray, np.ndarray]"]


# --------------------------------------------------------------------------- fingerprints
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def kb_fingerprint(kb_dir: str | os.PathLike) -> dict:
    """Path, size, mtime and sha256 of ``kb_dir/items.tsv`` (the hash decides matches; the
    mtime is informative only, copies change it)."""
    items = os.path.join(os.fspath(kb_dir), "items.tsv")
    if not os.path.isfile(items):
        raise FileNotFoundError(f"{items}: knowledge base items.tsv not found (build it with build-knowledge-base)")
    st = os.stat(items)
    return {
        "path": os.path.abspath(os.fspath(kb_dir)),
        "items_tsv_size": st.st_size,
        "items_tsv_mtime": st.st_mtime,
        "items_tsv_sha256": file_sha256(items),
    }


def dir_fingerprint(directory: str | os.PathLike) -> dict:
    """Path and one sha256 over the names and contents of all files under ``directory``
    (a retriever checkpoint), sorted by relative path."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: retriever directory not found")
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(directory)):
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, directory).encode("utf-8") + b"\0")
            h.update(file_sha256(full).encode("ascii"))
    return {"path": os.path.abspath(directory), "sha256": h.hexdigest()}


# --------------------------------------------------------------------------- faiss
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


def load_index(index_dir: str | os.PathLike, gpu: str = "auto", nprobe: int | None = None):
    """``(faiss index, meta dict)`` from an ``INDEX_DIR``; moved to all GPUs when
    ``gpu='auto'`` and faiss sees one; ``nprobe`` sets IVF probing (ignored for flat)."""
    import faiss

    index_dir = os.fspath(index_dir)
    meta = read_meta(index_dir)
    index = faiss.read_index(os.path.join(index_dir, INDEX_FILE))
    if index.ntotal != meta["n_items"]:
        raise ValueError(f"{index_dir}/{INDEX_FILE}: {index.ntotal} vectors but meta.json says {meta['n_items']}")
    if nprobe is not None and meta["index_type"] == "ivf":
        faiss.extract_index_ivf(index).nprobe = nprobe
    if use_gpu(gpu):
        logger.info("moving the faiss index to %d GPU(s)", faiss.get_num_gpus())
        index = faiss.index_cpu_to_all_gpus(index)
        if nprobe is not None and meta["index_type"] == "ivf":
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)
    return index, meta


def read_meta(index_dir: str | os.PathLike) -> dict:
    """``INDEX_DIR/meta.json`` as a dict."""
    path = os.path.join(os.fspath(index_dir), META_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: index meta.json not found (run ki-encode-knowledge first)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def meta_sha256(index_dir: str | os.PathLike) -> str:
    """sha256 of ``meta.json``'s bytes (identifies the index in the miner's progress files)."""
    return file_sha256(os.path.join(os.fspath(index_dir), META_FILE))


def check_index_matches(meta: dict, kb_fp: dict | None = None, retriever_fp: dict | None = None, n_items: int | None = None) -> None:
    """Raise ``ValueError`` when the index was built from another knowledge base (items.tsv
    hash or N) or another retriever (content hash)."""
    problems = []
    if kb_fp is not None and meta["knowledge_base"]["items_tsv_sha256"] != kb_fp["items_tsv_sha256"]:
        problems.append(
            f"knowledge base {kb_fp['path']}/items.tsv differs from the one indexed ({meta['knowledge_base']['path']})"
        )
    if n_items is not None and meta["n_items"] != n_items:
        problems.append(f"knowledge base has {n_items} items but the index has {meta['n_items']}")
    if retriever_fp is not None and meta.get("retriever") and meta["retriever"]["sha256"] != retriever_fp["sha256"]:
        problems.append(f"retriever {retriever_fp['path']} differs from the one used for the index ({meta['retriever']['path']})")
    if problems:
        raise ValueError("index does not match: " + "; ".join(problems) + " (re-run ki-encode-knowledge)")


# --------------------------------------------------------------------------- encoding
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


def set_threads(threads: int | None) -> None:
    """Limit torch and faiss (OpenMP) threads when ``threads`` is given."""
    if not threads:
        return
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ki-encode-knowledge",
        description="Encode a knowledge base with the token-level retriever: knowledge_table.npy (g(K), row 0 = "
        "no knowledge) and a faiss inner-product index over f(g(K)) whose ids are the item ids.",
    )
    p.add_argument("--knowledge-base", required=True, help="knowledge base directory (items.tsv)")
    p.add_argument("--retriever", required=True, help="trained retriever directory (ki-train-retriever --out)")
    p.add_argument("--out", required=True, help="index directory to write")
    p.add_argument("--batch-size", type=int, default=256, help="encoder batch size")
    p.add_argument("--max-length", type=int, default=64, help="knowledge text truncation (WordPieces)")
    p.add_argument("--chunk-size", type=int, default=2048, help="items per encode call (memory bound)")
    p.add_argument("--index", choices=INDEX_TYPES, default="flat", help="flat = exact IndexFlatIP; ivf = IndexIVFFlat; auto = ivf beyond --ivf-threshold items")
    p.add_argument("--ivf-threshold", type=int, default=DEFAULT_IVF_THRESHOLD)
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default ≈ 4·sqrt(N))")
    p.add_argument("--table-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--gpu", choices=("auto", "no"), default="auto", help="faiss GPU use")
    p.add_argument("--device", default="auto", help="torch device for the encoder (auto = cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch/faiss CPU threads")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    set_threads(args.threads)
    from data_prep.ki.knowledge_base import load_knowledge_base
    from data_prep.ki.retriever import TokenKnowledgeRetriever

    kb_fp = kb_fingerprint(args.knowledge_base)
    kb = load_knowledge_base(args.knowledge_base)
    retriever = TokenKnowledgeRetriever.load(args.retriever, device=resolve_device(args.device))
    retriever_fp = dir_fingerprint(args.retriever)

    def encode_fn(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return retriever.encode_knowledge(list(texts), batch_size=args.batch_size, max_length=args.max_length, progress=False)

    meta = write_index_dir(
        args.out,
        kb.texts,
        kb.ids,
        encode_fn,
        hidden_size=retriever.hidden_size,
        projection_dim=retriever.projection_dim,
        knowledge_base=kb_fp,
        retriever=retriever_fp,
        index_type=args.index,
        nlist=args.nlist,
        ivf_threshold=args.ivf_threshold,
        table_dtype=args.table_dtype,
        chunk_size=args.chunk_size,
        gpu=args.gpu,
        seed=args.seed,
        progress=not args.no_progress,
    )
    return meta


cli = console_script(main)  # the console script: exit status 0 on success

if __name__ == "__main__":
    main()
