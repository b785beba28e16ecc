"""Read-only access to a stock fairseq Transformer's decoder internals, without forking its code.

- :class:`AttentionScoreCapture`: a context manager that registers forward hooks on the decoder
  layers' ``self_attn`` (and/or ``encoder_attn``) modules and records each layer's pre-softmax
  attention scores ``A = Q K^T / sqrt(d_k)`` (negative distillation, Eq. 10).

  Why recompute: during training fairseq's ``MultiheadAttention`` takes PyTorch's fused
  ``F.multi_head_attention_forward`` path, which never exposes the scores, and the decoder
  layer asks for ``need_weights=False``. The hook therefore receives the module's inputs
  (``query``, ``key``) and recomputes ``q_proj(query) * scaling`` and ``k_proj(key)`` with the
  module's own weights, so the scores are differentiable with respect to the student's
  projections and equal what fairseq adds the masks to and feeds to the softmax
  (``before_softmax=True`` returns exactly that; ``tests/test_nd_criterion.py`` checks it).
  The scores are returned *unmasked* (future and padded keys hold their raw values); callers
  select the valid elements with :func:`attention_mask`. The model's own outputs are untouched:
  the hooks return ``None`` and do not modify inputs.

- :func:`forward_with_scores`: a forward pass with or without the capture.

- :func:`output_logits`: the output projection of teacher-forced decoder features as one matrix
  product.

- :func:`greedy_decode`: batched free-running greedy decoding with fairseq's incremental state
  (for the hard-target ND variant and the unlikelihood baseline), no beam search machinery.

Hidden states need no hook: ``TransformerDecoder`` returns every layer's output in
``extra["inner_states"]`` (index 0 = embeddings, l = output of layer l, ``(T, B, C)``).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

ATTENTION_KINDS = ("self", "encoder", "both")


def _input(args: tuple, kwargs: dict, name: str, position: int) -> Optional[Tensor]:
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else None


def attention_scores(module: nn.Module, query: Tensor, key: Optional[Tensor]) -> Tensor:
    """Pre-softmax scores of a fairseq ``MultiheadAttention`` for inputs ``query`` ``(T, B, C)``
    and ``key`` ``(S, B, C)`` (ignored for self-attention, which projects ``query``).

    Returns ``(B, H, T, S)``: ``(q_proj(query) / sqrt(d)) @ k_proj(key)^T`` per head, no mask.
    """
    if getattr(module, "bias_k", None) is not None or getattr(module, "add_zero_attn", False):
        raise NotImplementedError("attention capture does not support add_bias_kv / add_zero_attn")
    tgt_len, bsz, _ = query.shape
    heads, head_dim = module.num_heads, module.head_dim
    q = module.q_proj(query) * module.scaling
    k = module.k_proj(query if module.self_attention else key)
    q = q.contiguous().view(tgt_len, bsz * heads, head_dim).transpose(0, 1)
    k = k.contiguous().view(-1, bsz * heads, head_dim).transpose(0, 1)
    scores = torch.bmm(q, k.transpose(1, 2))
    return scores.view(bsz, heads, tgt_len, -1)


def output_logits(model: nn.Module, features: Tensor) -> Tensor:
    """``model.output_layer(features)`` for decoder features ``(B, T, C)`` (what
    ``model(..., features_only=True)`` returns), computed as one ``(B*T, C) x (C, V)`` matrix
    product. The decoder's features are a transposed view of its ``(T, B, C)`` states; projected
    as they are, PyTorch multiplies them batch by batch (``bmm`` with the weight expanded over
    B), 1.4-2x slower on CPU than one ``mm`` on a contiguous copy. Returns ``(B, T, V)``."""
    bsz, tgt_len, dim = features.shape
    logits = model.output_layer(features.reshape(bsz * tgt_len, dim))
    return logits.view(bsz, tgt_len, -1)


class AttentionScoreCapture:
    """``with AttentionScoreCapture(model.decoder, kind="self") as cap: model(**net_input)``
    then ``cap.scores["self"]`` is a list (one per decoder layer, in order) of ``(B, H, T, S)``
    pre-softmax score tensors of that forward pass.

    ``kind``: ``self`` (decoder self-attention, the default of negative distillation),
    ``encoder`` (encoder–decoder attention) or ``both``. Only full-sequence (teacher-forced)
    forward passes are recorded; calls with an incremental state are skipped. Hooks are removed
    on exit, and at most one forward pass may run inside the block.
    """

    def __init__(self, decoder: nn.Module, kind: str = "self"):
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"kind must be one of {ATTENTION_KINDS}, got {kind!r}")
        if not hasattr(decoder, "layers"):
            raise TypeError(f"{type(decoder).__name__} has no .layers: not a fairseq TransformerDecoder")
        self.decoder = decoder
        self.kinds = ["self", "encoder"] if kind == "both" else [kind]
        self.scores: Dict[str, List[Tensor]] = {k: [] for k in self.kinds}
        self._handles: list = []

    def _hook(self, kind: str):
        def hook(module, args, kwargs, output):
            if kwargs.get("incremental_state") is not None:
                return None
            query = _input(args, kwargs, "query", 0)
            key = _input(args, kwargs, "key", 1)
            self.scores[kind].append(attention_scores(module, query, key))
            return None

        return hook

    def __enter__(self) -> "AttentionScoreCapture":
        for layer in self.decoder.layers:
            for kind in self.kinds:
                module = layer.self_attn if kind == "self" else getattr(layer, "encoder_attn", None)
                if module is None:
                    raise ValueError("encoder attention requested but the decoder layer has none")
                self._handles.append(module.register_forward_hook(self._hook(kind), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def forward_with_scores(model: nn.Module, net_input: dict, kind: Optional[str], **kwargs):
    """``(model(**net_input, **kwargs), scores)``: the model's output and, for ``kind`` (see
    :class:`AttentionScoreCapture`), the captured scores ``{kind: [per layer]}``; ``{}`` for
    ``kind=None`` (no hooks)."""
    if kind is None:
        return model(**net_input, **kwargs), {}
    with AttentionScoreCapture(model.decoder, kind) as capture:
        output = model(**net_input, **kwargs)
    return output, capture.scores


def attention_mask(
    kind: str,
    target_mask: Tensor,
    key_padding_mask: Optional[Tensor] = None,
    causal: bool = True,
) -> Tensor:
    """Bool mask ``(B, 1, T, S)`` of the valid elements of a score tensor ``(B, H, T, S)``.

    Args:
        kind: ``self`` or ``encoder``.
        target_mask: ``(B, T)`` True at real (non-pad) target positions (query rows).
        key_padding_mask: ``(B, S)`` True at padded keys (fairseq's convention); None = none.
        causal: for ``self``, exclude future keys (j > i), which the decoder masks with -inf.
    """
    bsz, tgt_len = target_mask.shape
    if kind == "self":
        valid_keys = target_mask if key_padding_mask is None else ~key_padding_mask
        mask = target_mask[:, :, None] & valid_keys[:, None, :]
        if causal:
            mask = mask & torch.ones(tgt_len, tgt_len, dtype=torch.bool, device=mask.device).tril()[None]
    elif kind == "encoder":
        if key_padding_mask is None:
            raise ValueError("encoder attention needs the encoder padding mask (B, S)")
        mask = target_mask[:, :, None] & ~key_padding_mask[:, None, :]
    else:
        raise ValueError(f"kind must be 'self' or 'encoder', got {kind!r}")
    return mask[:, None]


@torch.no_grad()
def greedy_decode(model: nn.Module, src_tokens: Tensor, src_lengths: Tensor, max_len: int,
                  bos: int, eos: int, pad: int) -> Tensor:
    """Free-running greedy decoding of a fairseq encoder–decoder model (eval behaviour is the
    caller's choice: dropout follows ``model.training``).

    Returns ``(B, L)`` long with ``L <= max_len``: each row the greedy tokens (without the
    leading ``bos``), ended by ``eos`` if it was produced within ``max_len`` steps, then ``pad``.
    """
    bsz = src_tokens.size(0)
    encoder_out = model.encoder(src_tokens, src_lengths=src_lengths)
    incremental_state: Dict[str, Dict[str, Optional[Tensor]]] = torch.jit.annotate(
        Dict[str, Dict[str, Optional[Tensor]]], {}
    )
    tokens = src_tokens.new_full((bsz, 1), bos)
    finished = torch.zeros(bsz, dtype=torch.bool, device=src_tokens.device)
    out: List[Tensor] = []
    for _ in range(max_len):
        logits, _ = model.decoder(tokens, encoder_out=encoder_out, incremental_state=incremental_state)
        step_logits = logits[:, -1, :].clone()
        step_logits[:, pad] = float("-inf")  # as fairseq's SequenceGenerator: never emit padding
        next_tok = step_logits.argmax(dim=-1)
        next_tok = next_tok.masked_fill(finished, pad)
        out.append(next_tok)
        finished = finished | next_tok.eq(eos)
        tokens = torch.cat([tokens, next_tok.unsqueeze(1)], dim=1)
        if bool(finished.all()):
            break
    if not out:
        return src_tokens.new_full((bsz, 0), pad)
    return torch.stack(out, dim=1)
