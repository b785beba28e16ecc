"""The geometry of embedded words for the token-embedding PCA (knowledge internalization paper
§7.1): L2 normalisation, pair distances (raw, normalised, 2-D PCA), the 2-D PCA and K-means
clusters of the PCA points.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows of ``vectors`` ``(W, d)`` scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def pair_distances(words: Sequence[str], vectors: np.ndarray, pairs: Sequence[Tuple[str, str]],
                   coords: Optional[np.ndarray] = None) -> List[Dict[str, Any]]:
    """Per pair ``(a, b)`` of ``words``: Euclidean distance between the rows of ``vectors``
    ``(W, d)``, between their L2-normalised rows, and (where ``coords`` ``(W, 2)`` is given)
    between their PCA coordinates. Raises KeyError for a pair word not among ``words``."""
    index = {w: i for i, w in enumerate(words)}
    absent = sorted({w for pair in pairs for w in pair if w not in index})
    if absent:
        raise KeyError(f"--pairs: word(s) {absent} are not among the embedded words {list(words)}")
    unit = l2_normalise(vectors)
    out = []
    for a, b in pairs:
        i, j = index[a], index[b]
        rec: Dict[str, Any] = {
            "pair": f"{a}:{b}",
            "euclidean": float(np.linalg.norm(vectors[i] - vectors[j])),
            "euclidean_normalised": float(np.linalg.norm(unit[i] - unit[j])),
        }
        if coords is not None:
            rec["pca_2d"] = float(np.linalg.norm(coords[i] - coords[j]))
        out.append(rec)
    return out


def pca_2d(vectors: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """PCA of ``vectors`` ``(W, d)``, W >= 2, to 2-D: ``(coords (W, 2), explained variance ratio (2,))``.
    Full SVD (deterministic; sklearn fixes the components' signs)."""
    from sklearn.decomposition import PCA

    if vectors.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 words, got {vectors.shape[0]}")
    pca = PCA(n_components=2, svd_solver="full")
    coords = pca.fit_transform(vectors)
    return coords, pca.explained_variance_ratio_


def kmeans_clusters(coords: np.ndarray, k: int, seed: int = 1) -> np.ndarray:
    """K-means cluster labels ``(W,)`` of the points ``coords`` ``(W, 2)`` (seeded); all 0 for k <= 1."""
    from sklearn.cluster import KMeans

    if k <= 1:
        return np.zeros(coords.shape[0], dtype=int)
    if k > coords.shape[0]:
        raise ValueError(f"--clusters {k} > {coords.shape[0]} words")
    return KMeans(n_clusters=k, random_state=seed, n_init=10).fit_predict(coords)
