"""KID's key/value update (``--kid-solver kv``) for Hugging Face causal LMs: a decoding loop.

A ``LogitsProcessor`` sees scores, never the cache, so the key/value mode has its own entry
point, :func:`kid_kv_generate`, for greedy decoding and sampling, batched, with left padding::

    from informative_dialogue.kid.hf_kv_decoding import kid_kv_generate
    from informative_dialogue.kid.memory import KIDCore
    from informative_dialogue.kid.trie_files import InMemoryTries
    core = KIDCore(InMemoryTries(tries), mapper, KIDOptions(solver="kv"))   # the same core as hf_processor.py
    enc = tokenizer(prompts, return_tensors="pt", padding=True)             # padding_side="left"
    out = kid_kv_generate(model, enc["input_ids"], enc["attention_mask"], core, max_new_tokens=40,
                          do_sample=True, top_k=20, top_p=0.92, no_repeat_ngram_size=2,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)

Per new token (``N`` rows, sequence ``s`` so far, newest token ``s[-1]``):

1. one step of the *plain* cache on ``s[-1]`` (the prompt's prefill at the first token): ``p``,
   the model's distribution of the actual text;
2. ``KIDCore.observe`` on ``s[-1]`` (generated tokens only), then ``KIDCore.demo_index``
   (unfinished rows only);
3. :func:`~informative_dialogue.kid.kv_update.kv_perturbation` on the *perturbed* cache, which
   holds ``s[:-1]`` (at the first token: the plain prefill without its last position, so the
   prompt is encoded once): ``step_fn`` runs ``s[-1]`` on a fresh cache built from
   ``perturbed + Δ``; its last call (at the final Δ, without gradients) built the cache of ``s``
   with Δ added, which becomes the perturbed cache -- the perturbation is carried into later
   steps, as in the release. When no row has demonstrations, ``s[-1]`` is fed to the
   perturbed cache as it is;
4. :func:`~informative_dialogue.kid.kv_update.geometric_mix` of the perturbed and the plain
   distribution with weight ``options.kv_mix`` (rows without demonstrations: ``p`` exactly);
5. the ``transformers`` logits processors ``generate`` would use -- min-new-tokens (EOS banned),
   no-repeat-n-gram, then for sampling temperature, top-k, top-p -- and argmax or a draw.

Every token is fed to each cache exactly once: after ``n`` new tokens both caches hold
``L + n - 1`` positions (the newest token is never fed, as in ``generate``). Finished rows
(an EOS drawn) get ``pad_token_id`` and no update; the loop ends when every row has finished.
With ``options.steps == 0`` (or tries without knowledge) only step 1 and 5 run: plain decoding,
the same tokens as ``model.generate`` for greedy. Gradients are enabled only inside step 3, with
respect to Δ; the model's parameters are neither changed nor given a ``.grad``. The model should
be in eval mode (dropout would make the steps random).

:class:`CausalLMStepper` is the only code that knows the model family (``DynamicCache`` with
``(N, heads, T, head_dim)`` keys/values per layer, ``position_ids`` from the attention mask as
``generate`` makes them); models with sliding-window or non-attention caches need another
stepper. This module imports ``torch`` (through the core) but not ``transformers`` until a
stepper is built.
"""
from __future__ import annotations

import inspect
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from informative_dialogue.kid.kv_update import Past, demo_log_mass, geometric_mix, kl_divergence, kv_perturbation
from informative_dialogue.kid.memory import EntityMemory, KIDCore

logger = logging.getLogger(__name__)

__all__ = ["CausalLMStepper", "kid_kv_generate"]


class CausalLMStepper:
    """A Hugging Face causal LM as a step function over explicit key/value caches.

    Args:
        model: a ``transformers`` causal LM whose forward takes ``past_key_values`` (a
            ``DynamicCache``), ``attention_mask`` and ``position_ids``.
    """

    def __init__(self, model: Any) -> None:
        from transformers import DynamicCache

        self.model = model
        self._cache_cls = DynamicCache
        self._config = model.config.get_text_config(decoder=True)
        params = inspect.signature(model.forward).parameters
        self._extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def new_cache(self, past: Optional[Past] = None) -> Any:
        """An empty cache, or one holding ``past`` (per layer (key, value), (N, heads, T, d))."""
        if past is None:
            return self._cache_cls(config=self._config)
        return self._cache_cls(ddp_cache_data=list(past), config=self._config)

    def step(self, input_ids: Tensor, cache: Any, attention_mask: Optional[Tensor], position_ids: Tensor) -> Tensor:
        """Run ``input_ids`` (N, S) after ``cache`` (appended to it) -> (N, V) float32 next-token
        log-probs of the last position. ``attention_mask`` (N, T + S) covers cache and input
        (``None``: no padding); ``position_ids`` (N, S)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True, **self._extra)
        return out.logits[:, -1].float().log_softmax(dim=-1)

    @staticmethod
    def tensors(cache: Any) -> List[Tuple[Tensor, Tensor]]:
        """Per layer ``(keys, values)`` of a cache (the cache's own tensors, not copies)."""
        return [(layer.keys, layer.values) for layer in cache.layers]

    @staticmethod
    def length(past: Past) -> int:
        """Positions held by ``past``."""
        return int(past[0][0].size(-2)) if len(past) else 0


def _token_filters(prompt_length: int, eos: List[int], do_sample: bool, top_k: int, top_p: float,
                   temperature: float, no_repeat_ngram_size: int, min_new_tokens: int) -> List[Callable]:
    """The ``transformers`` processors ``generate`` applies for these settings, in its order."""
    from transformers import (MinNewTokensLengthLogitsProcessor, NoRepeatNGramLogitsProcessor,
                              TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    procs: List[Callable] = []
    if min_new_tokens > 0 and eos:
        procs.append(MinNewTokensLengthLogitsProcessor(prompt_length, min_new_tokens, eos))
    if no_repeat_ngram_size > 0:
        procs.append(NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
    if do_sample:
        if temperature != 1.0:
            procs.append(TemperatureLogitsWarper(temperature))
        if top_k > 0:
            procs.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p))
    return procs


def _check(max_new_tokens: int, top_k: int, top_p: float, temperature: float, no_repeat_ngram_size: int,
           min_new_tokens: int) -> None:
    checks = [("max_new_tokens", max_new_tokens, max_new_tokens >= 0), ("top_k", top_k, top_k >= 0),
              ("top_p", top_p, 0.0 < top_p <= 1.0), ("temperature", temperature, temperature > 0),
              ("no_repeat_ngram_size", no_repeat_ngram_size, no_repeat_ngram_size >= 0),
              ("min_new_tokens", min_new_tokens, min_new_tokens >= 0)]
    for name, value, ok in checks:
        if not ok:
            raise ValueError(f"kid_kv_generate: invalid {name}={value!r}")


def _add(stats: Optional[Dict[str, float]], key: str, value: float) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + value


def _record(stats: Optional[Dict[str, float]], plain: Tensor, final: Tensor, updated: Tensor,
            pert_mass: Tensor, index: Tensor, valid: Tensor) -> None:
    """Per-step evidence (see :func:`kid_kv_generate`'s ``stats``)."""
    if stats is None:
        return
    _add(stats, "rows", plain.size(0))
    _add(stats, "argmax_changed", int((final.argmax(-1) != plain.argmax(-1)).sum()))
    n_up = int(updated.sum())
    _add(stats, "updated", n_up)
    if n_up:
        p, f = plain[updated], final[updated]
        _add(stats, "kl", float(kl_divergence(p, f).sum()))
        _add(stats, "kl_reverse", float(kl_divergence(f, p).sum()))
        idx, ok = index[updated], valid[updated]
        _add(stats, "demo_mass", float(demo_log_mass(p, idx, ok).exp().sum()))
        _add(stats, "demo_mass_kid", float(demo_log_mass(f, idx, ok).exp().sum()))
        _add(stats, "demo_mass_perturbed", float(pert_mass[updated].sum()))


def kid_kv_generate(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    core: KIDCore,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    top_k: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    no_repeat_ngram_size: int = 0,
    min_new_tokens: int = 0,
    eos_token_id: Union[None, int, Sequence[int]] = None,
    pad_token_id: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    trie_indices: Optional[Sequence[int]] = None,
    stats: Optional[Dict[str, float]] = None,
) -> Tensor:
    """Greedy decoding or sampling with KID's key/value update (module doc).

    Args:
        model: a Hugging Face causal LM (eval mode); see :class:`CausalLMStepper`.
        input_ids: (N, L) prompts, left-padded.
        attention_mask: (N, L), 0 on the padding.
        core: the :class:`~informative_dialogue.kid.memory.KIDCore` (tries, token mapper,
            options); its ``steps``, ``kv_step``, ``kv_kl``, ``kv_gamma`` and ``kv_mix`` are used
            whatever its ``solver`` (``lr``, ``sigma``, ``beta`` are not).
        max_new_tokens: at most this many new tokens.
        do_sample: draw from the filtered distribution (else argmax).
        top_k, top_p, temperature: sampling filters (0, 1.0, 1.0: off), as in ``generate``.
        no_repeat_ngram_size: ban n-grams already in the row (``input_ids`` included; 0: off).
        min_new_tokens: EOS banned before this many new tokens.
        eos_token_id: one id or several; a row ends when it draws one.
        pad_token_id: what finished rows get (default: the first EOS id).
        generator: the ``torch.Generator`` of the draws (default: torch's global one).
        trie_indices: the trie (``core.tries`` index) of each row; default ``range(N)``.
        stats: a dict to add to (over calls): ``steps`` (decoding steps with KID on), ``rows`` (rows
            seen over those steps), ``updated`` (rows updated), ``argmax_changed`` (rows whose most
            probable token differs between the mixture and ``p``), over updated rows ``kl``
            (sum of KL(p || mixture), the paper's direction, as the logits solvers' totals),
            ``kl_reverse`` (KL(mixture || p)), ``demo_mass`` / ``demo_mass_kid`` /
            ``demo_mass_perturbed`` (sum of the demonstrations' probability under ``p``, the
            mixture and the perturbed distribution), and ``seconds_plain``, ``seconds_kv``
            (the update, the final perturbed step included), ``seconds_total``; last values:
            ``cache_length_plain`` / ``cache_length_perturbed`` (positions held at the end).

    Returns:
        (N, L + T) ``input_ids`` followed by the T <= ``max_new_tokens`` new tokens (T < max
        only when every row finished), like ``model.generate``.
    """
    _check(max_new_tokens, top_k, top_p, temperature, no_repeat_ngram_size, min_new_tokens)
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape or input_ids.size(1) == 0:
        raise ValueError(f"input_ids and attention_mask must both be (N, L) with L >= 1, got "
                         f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}")
    eos = [] if eos_token_id is None else [int(eos_token_id)] if isinstance(eos_token_id, int) else [
        int(e) for e in eos_token_id]
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else None)
    n, length = input_ids.shape
    trie_indices = list(range(n)) if trie_indices is None else list(trie_indices)
    if len(trie_indices) != n:
        raise ValueError(f"{len(trie_indices)} trie indices for {n} rows")
    t_start = time.perf_counter()
    o = core.options
    kid_on = not core.disabled
    stepper = CausalLMStepper(model)
    filters = _token_filters(length, eos, do_sample, top_k, top_p, temperature, no_repeat_ngram_size, min_new_tokens)
    device = input_ids.device
    mask = attention_mask.to(device=device, dtype=torch.long)
    no_padding = bool((mask == 1).all())  # as generate: then no mask at all
    position = ((mask.cumsum(-1) - 1).masked_fill(mask == 0, 0))
    seq = input_ids
    unfinished = torch.ones(n, dtype=torch.bool, device=device)
    eos_t = torch.tensor(eos, dtype=torch.long, device=device)
    memory: Optional[EntityMemory] = None
    with torch.no_grad():
        t0 = time.perf_counter()
        plain_cache = stepper.new_cache()
        plain = stepper.step(input_ids, plain_cache, None if no_padding else mask, position)
        _add(stats, "seconds_plain", time.perf_counter() - t0)
        position = position[:, -1:]
        perturbed: Past = []
        if kid_on:
            words = [core.mapper.decode_words(row[m.bool()].tolist()) for row, m in zip(input_ids, mask)]
            memory = core.new_memory(trie_indices, words, 1, device)
            perturbed = [(k[..., :-1, :].clone(), v[..., :-1, :].clone()) for k, v in stepper.tensors(plain_cache)]
        for t in range(max_new_tokens):
            if t > 0:  # feed the newest token to the plain cache
                t0 = time.perf_counter()
                mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
                position = position + 1
                plain = stepper.step(seq[:, -1:], plain_cache, None if no_padding else mask, position)
                _add(stats, "seconds_plain", time.perf_counter() - t0)
                if memory is not None:
                    core.observe(memory, seq[:, -1], trie_indices)
            scores = plain
            if memory is not None:
                t0 = time.perf_counter()
                index, valid = core.demo_index(memory, trie_indices, plain.size(1), device, unfinished.tolist())
                built: List[Any] = []
                token, step_mask, step_pos = seq[:, -1:], None if no_padding else mask, position

                def step_fn(past: Past) -> Tensor:
                    cache = stepper.new_cache(past)
                    built[:] = [cache]
                    return stepper.step(token, cache, step_mask, step_pos)

                upd = kv_perturbation(step_fn, perturbed, plain, index, valid, steps=o.steps, step_size=o.kv_step,
                                      kl_scale=o.kv_kl, gamma=o.kv_gamma)
                pert = upd.log_probs if upd.log_probs is not None else step_fn(perturbed)
                perturbed = stepper.tensors(built[0])  # s with the final perturbation (no graph: no_grad call)
                scores = geometric_mix(pert, plain, o.kv_mix, upd.updated)
                _add(stats, "steps", 1)
                _add(stats, "seconds_kv", time.perf_counter() - t0)
                _record(stats, plain, scores, upd.updated, upd.demo_mass, index, valid)
            for proc in filters:
                scores = proc(seq, scores)
            if do_sample:
                nxt = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)
            else:
                nxt = scores.argmax(dim=-1)
            if pad is not None:
                nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad))
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            if eos:
                unfinished &= ~torch.isin(nxt, eos_t)
                if not bool(unfinished.any()):
                    break
    if stats is not None:
        stats["cache_length_plain"] = plain_cache.get_seq_length()
        stats["cache_length_perturbed"] = stepper.length(perturbed) if kid_on else 0
        _add(stats, "seconds_total", time.perf_counter() - t_start)
    return seq
