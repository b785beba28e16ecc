"""Reading a fairseq model's token embeddings without fairseq (knowledge internalization paper
§7.1): the source dictionary ``dict.txt`` indexed as fairseq does, the checkpoint's state dict,
and its encoder token embedding matrix (or the shared decoder one).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from informative_dialogue.errors import CorpusError

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
ENCODER_KEY = "encoder.embed_tokens.weight"
SHARED_FALLBACK_KEYS = ("decoder.embed_tokens.weight", "decoder.output_projection.weight")

def load_dictionary(path: str | os.PathLike) -> Dict[str, int]:
    """symbol -> row of a fairseq ``dict.txt`` (``symbol count`` per line, rows 0-3 are
    ``<s> <pad> </s> <unk>``), indexed exactly as ``fairseq.data.Dictionary.load`` does
    (``#fairseq:overwrite`` lines re-map a symbol to a new row). Raises CorpusError."""
    vocab: Dict[str, int] = {s: i for i, s in enumerate(FAIRSEQ_SPECIALS)}
    rows = len(FAIRSEQ_SPECIALS)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip()
            if not line:
                continue
            parts = line.rsplit(" ", 1)
            overwrite = False
            if len(parts) == 2 and parts[1] == "#fairseq:overwrite":
                overwrite = True
                parts = parts[0].rsplit(" ", 1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise CorpusError(path, f"expected '<symbol> <count>', got {line!r}", line=n)
            word = parts[0]
            if word in vocab and not overwrite:
                raise CorpusError(path, f"duplicate symbol {word!r} (add '#fairseq:overwrite' to allow it)",
                                  line=n)
            vocab[word] = rows
            rows += 1
    return vocab


def vocab_rows(vocab: Mapping[str, int]) -> int:
    """Number of rows an embedding matrix of this dictionary has (largest index + 1)."""
    return max(vocab.values()) + 1 if vocab else 0


def load_state_dict(path: str | os.PathLike) -> Tuple[Dict[str, Any], Any]:
    """``(model state dict, cfg or None)`` of a fairseq checkpoint (``{"model": ..., "cfg": ...}``)
    or of a bare state dict. fairseq checkpoints pickle their configuration, so this unpickles
    (``weights_only=False``): load only checkpoints you trust, as fairseq itself does."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a fairseq checkpoint (a dict), got {type(state).__name__}")
    if "model" in state and isinstance(state["model"], dict):
        return state["model"], state.get("cfg") or state.get("args")
    return state, None


def _shares_embeddings(cfg: Any) -> Optional[bool]:
    if cfg is None:
        return None
    model_cfg = cfg.get("model", None) if hasattr(cfg, "get") else getattr(cfg, "model", None)
    source = model_cfg if model_cfg is not None else cfg
    value = source.get("share_all_embeddings", None) if hasattr(source, "get") else getattr(
        source, "share_all_embeddings", None)
    return None if value is None else bool(value)


def embedding_matrix(state: Mapping[str, Any], cfg: Any = None, key: Optional[str] = None,
                     source: str = "checkpoint") -> np.ndarray:
    """The encoder token embeddings ``(V, d)`` float64 of a state dict.

    ``key`` names the tensor explicitly. Otherwise ``encoder.embed_tokens.weight``; where the
    state dict lacks it but the model shares all embeddings (``share_all_embeddings`` in its
    config, or no config to say otherwise), the decoder's embedding / output projection, which
    is then the same matrix. Raises KeyError listing the embedding-like keys there are."""
    if key is None:
        if ENCODER_KEY in state:
            key = ENCODER_KEY
        elif _shares_embeddings(cfg) is not False:
            key = next((k for k in SHARED_FALLBACK_KEYS if k in state), None)
    if key is None or key not in state:
        found = [k for k in state if "embed" in k or "output_projection" in k]
        raise KeyError(f"{source}: no {key or ENCODER_KEY} in the state dict (embedding-like keys: {found}); "
                       "pass --embedding-key")
    weights = state[key]
    weights = weights.detach().float().cpu().numpy() if hasattr(weights, "detach") else np.asarray(weights)
    if weights.ndim != 2:
        raise ValueError(f"{source}: {key} has shape {weights.shape}, expected (vocabulary, dim)")
    return weights.astype(np.float64)
