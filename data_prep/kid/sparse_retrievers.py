"""The lexical and random retrievers of knowledge-infused decoding (KID, paper section 3.1),
for ``kid-retrieve --retriever sparse`` and ``--retriever random``:

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
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
from tqdm import tqdm

_TERM = re.compile(r"[a-z0-9]+")


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
        """(N, k) zero scores and passage indices (-1 beyond the collection's size)."""
        return self.rows(len(queries), k)

    def rows(self, n_queries: int, k: int, first_row: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """What :meth:`search` returns for queries ``first_row .. first_row + n_queries - 1`` of
        one long call (query ``r`` seeded by ``(seed, r)``), so that chunks and shards of an
        input draw what the whole input draws."""
        k_eff = min(k, self.n)
        idx = np.full((n_queries, k), -1, dtype=np.int64)
        for r in range(n_queries):
            idx[r, :k_eff] = np.random.default_rng((self.seed, first_row + r)).choice(self.n, size=k_eff, replace=False)
        return np.zeros((n_queries, k), dtype=np.float32), idx
