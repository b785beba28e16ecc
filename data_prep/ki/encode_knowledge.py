"""``ki-encode-knowledge``: encode a knowledge base once with the trained token-level
retriever (knowledge internalization, paper §4.3) into a knowledge index directory (the
table g(K) and a faiss index over f(g(K)); layout in :mod:`data_prep.ki.index`, writer in
:mod:`data_prep.ki.index_writer`).
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np

from informative_dialogue.cli import setup_logging, console_script
from data_prep.ki.faiss_index import DEFAULT_IVF_THRESHOLD, INDEX_TYPES
from data_prep.ki.index import dir_fingerprint, kb_fingerprint, resolve_device, set_threads
from data_prep.ki.index_writer import write_index_dir


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
