"""KID's key/value update (``--kid-solver kv``) through fairseq's incremental state.

The KID release does not update the next-token distribution directly: it perturbs the
decoder's cached self-attention keys/values, PPLM-style, and keeps the perturbation for the
following steps (``../shared/DESIGN.md``, "What the KID release's update actually is"). In
fairseq's ``SequenceGenerator`` that cache is the *incremental state* that ``_generate``
passes to the model; this module keeps a second one per batch, :class:`KVDecoderState`,
beside the plain one:

* the plain state (``_generate``'s own) gives the model's distribution p of the text so far;
* the perturbed state holds, for every decoder layer, the self-attention ``prev_key`` /
  ``prev_value``, each (N, heads, T, head_dim), of the same tokens plus the perturbations of
  all earlier steps (encoder-decoder attention keys are static and not perturbed).

Per decoding step with T >= 1 cached positions (:meth:`KVDecoderState.decode`):
:func:`~informative_dialogue.kid.kv_update.kv_perturbation` finds the perturbation Δ of the
cache; its ``step_fn`` runs one decoder step of the newest token on a *copy* of the perturbed
state whose self-attention caches are replaced by cache + Δ. The K copies built with gradients
are discarded; the copy of ``kv_perturbation``'s final call (no gradients, at the final Δ)
becomes the perturbed state: cache + Δ for good, with the newest token appended, and that
call's log-probs are p*. The step returns
:func:`~informative_dialogue.kid.kv_update.geometric_mix` (p*, p) (rows without
demonstrations: p). So a token costs one plain step, K forward+backward steps and one
forward step. At step 0 the cache is empty: p is returned and the token is only fed to the
perturbed state; when no row has demonstrations, the token is fed to the perturbed state
unchanged. Every token enters each state exactly once.

``reorder`` follows the search (beam reordering, finished sentences pruned) with the
decoder's own ``reorder_incremental_state_scripting``.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from informative_dialogue.kid.kv_update import geometric_mix, kl_divergence, kv_perturbation
from informative_dialogue.kid.options import KIDOptions

logger = logging.getLogger(__name__)

__all__ = ["KVDecoderState", "self_attention_modules", "decoder_log_probs"]

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]
Past = List[Tuple[Tensor, Tensor]]


def self_attention_modules(model: Any) -> List[Any]:
    """The decoder self-attention modules (fairseq ``MultiheadAttention``) of ``model``, one per
    layer; ValueError when the model is not a fairseq transformer decoder with incremental state."""
    layers = getattr(getattr(model, "decoder", None), "layers", None)
    attns = [getattr(layer, "self_attn", None) for layer in (layers or [])]
    if not attns or not all(hasattr(a, "_get_input_buffer") and hasattr(a, "_set_input_buffer") for a in attns):
        raise ValueError(
            f"--kid-solver kv perturbs the decoder's cached self-attention keys/values: it needs a fairseq "
            f"transformer decoder (model.decoder.layers[i].self_attn, MultiheadAttention with incremental "
            f"state); got {type(model).__name__}"
        )
    return attns


def decoder_log_probs(model: Any, tokens: Tensor, encoder_out: Optional[Dict[str, List[Tensor]]],
                      state: IncrementalState, temperature: float) -> Tensor:
    """One incremental decoder step of the newest token of ``tokens`` (N, t) on ``state``
    (which it extends by that token): next-token log-probs (N, V), with the temperature
    handling of fairseq's ``EnsembleModel.forward_decoder`` (logits / temperature, then the
    model's ``get_normalized_probs``). Differentiable (no in-place operation)."""
    out = model.decoder.forward(tokens, encoder_out=encoder_out, incremental_state=state)
    logits = out[0][:, -1:, :] / temperature
    extra = None if len(out) <= 1 else out[1]
    return model.get_normalized_probs((logits, extra), log_probs=True, sample=None)[:, -1, :]


class KVDecoderState:
    """The perturbed incremental state of one batch for one model (see module doc).

    Args:
        model: the fairseq model (a transformer encoder-decoder or language model).
        options: the KID options (``steps``, ``kv_step``, ``kv_kl``, ``kv_gamma``, ``kv_mix``).
    """

    def __init__(self, model: Any, options: KIDOptions) -> None:
        self.model = model
        self.options = options
        self.attns = self_attention_modules(model)
        self.state: IncrementalState = {}

    def _buffer(self, layer: int, state: Optional[IncrementalState] = None) -> Dict[str, Optional[Tensor]]:
        return self.attns[layer]._get_input_buffer(self.state if state is None else state)

    def cache_len(self) -> int:
        """T, the positions cached in the perturbed state (0 before the first step)."""
        key = self._buffer(0).get("prev_key")
        return 0 if key is None else int(key.size(2))

    def past(self) -> Past:
        """Per layer (prev_key, prev_value) of the perturbed state, each (N, heads, T, head_dim)."""
        out: Past = []
        for layer in range(len(self.attns)):
            buf = self._buffer(layer)
            out.append((buf["prev_key"], buf["prev_value"]))  # type: ignore[arg-type]
        return out

    def with_past(self, past: Sequence[Tuple[Tensor, Tensor]]) -> IncrementalState:
        """A copy of the perturbed state whose self-attention caches are ``past``; a decoder step
        on it writes into the copy only (each module's buffer dict is copied; tensors shared)."""
        state: IncrementalState = {k: dict(v) if isinstance(v, dict) else v for k, v in self.state.items()}
        for layer, (key, value) in enumerate(past):
            buf = self._buffer(layer, state)
            buf["prev_key"], buf["prev_value"] = key, value
        return state

    def reorder(self, new_order: Tensor) -> None:
        """Row ``j`` becomes old row ``new_order[j]`` (as ``_generate``'s ``reorder_state``)."""
        if self.state:
            self.model.decoder.reorder_incremental_state_scripting(self.state, new_order)

    def decode(
        self,
        tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]],
        plain_log_probs: Tensor,
        demonstrations: Callable[[], Tuple[Tensor, Tensor]],
        temperature: float = 1.0,
    ) -> Tensor:
        """The step's KID log-probs (N, V).

        Args:
            tokens: (N, t) the hypotheses so far; the newest token ``tokens[:, -1]`` is fed to
                the perturbed state (the plain state has it already, from ``plain_log_probs``).
            encoder_out: the model's encoder output (``None`` for a language model).
            plain_log_probs: (N, V) p, from the plain state.
            demonstrations: returns ``(demo_index, demo_valid)``, both (N, D_max) (the
                :meth:`~informative_dialogue.kid.memory.KIDCore.demo_index` of the step); called
                only when the cache is not empty.
            temperature: the generator's sampling temperature.
        """
        o = self.options
        n = plain_log_probs.size(0)
        if self.state and self._buffer(0)["prev_key"].size(0) != n:  # type: ignore[union-attr]
            raise RuntimeError(f"KID kv: {n} hypotheses but {self._buffer(0)['prev_key'].size(0)} rows in the "
                               "perturbed cache (reordering lost)")
        if self.cache_len() == 0:  # step 0: nothing to perturb; keep both caches aligned
            decoder_log_probs(self.model, tokens, encoder_out, self.state, temperature)
            return plain_log_probs
        index, valid = demonstrations()
        kept: List[IncrementalState] = []

        def step_fn(past: Sequence[Tuple[Tensor, Tensor]]) -> Tensor:
            state = self.with_past(past)
            if not torch.is_grad_enabled():  # kv_perturbation's final call, at cache + Δ: keep its cache
                kept[:] = [state]
            return decoder_log_probs(self.model, tokens, encoder_out, state, temperature)

        upd = kv_perturbation(step_fn, self.past(), plain_log_probs, index, valid, steps=o.steps,
                              step_size=o.kv_step, kl_scale=o.kv_kl, gamma=o.kv_gamma)
        if upd.log_probs is None:  # no row updated (Δ = 0): feed the token, return p
            decoder_log_probs(self.model, tokens, encoder_out, self.state, temperature)
            return plain_log_probs
        if len(kept) != 1:
            raise RuntimeError("KID kv: kv_perturbation returned log-probs without a final call of step_fn")
        self.state = kept[0]  # cache + Δ for good, then the newest token
        mixed = geometric_mix(upd.log_probs, plain_log_probs, o.kv_mix, upd.updated)
        if logger.isEnabledFor(logging.DEBUG):
            up = upd.updated
            logger.debug("KID kv step: %d/%d rows updated, mean KL %.4f, mean demonstration mass %.4f", int(up.sum()), n,
                         float(kl_divergence(plain_log_probs[up], mixed[up]).mean()) if bool(up.any()) else 0.0,
                         float(upd.demo_mass[up].mean()))
        return mixed
