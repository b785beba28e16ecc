"""The knowledge index directory of knowledge internalization (KI, paper §4.3) as the miner
reads it: its file names, the fingerprints that tie it to a knowledge base and a retriever,
its ``meta.json``, loading its faiss index, and the thread / device settings that
``ki-encode-knowledge`` and ``ki-mine`` share.

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

The directory is written by :func:`data_prep.ki.index_writer.write_index_dir` (the faiss index
itself is built in :mod:`data_prep.ki.faiss_index`); the command is
:mod:`data_prep.ki.encode_knowledge`. :func:`load_index` searches on GPU faiss
(``faiss.get_num_gpus() > 0``) unless ``gpu='no'``; every code path also runs on the CPU build.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os

from data_prep.ki.faiss_index import use_gpu
from informative_dialogue.text_io import file_sha256

logger = logging.getLogger(__name__)

TABLE_FILE = "knowledge_table.npy"
PROJ_FILE = "knowledge_proj.npy"
INDEX_FILE = "index.faiss"
META_FILE = "meta.json"


# --------------------------------------------------------------------------- fingerprints
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


# --------------------------------------------------------------------------- loading
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


# --------------------------------------------------------------------------- runtime
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
