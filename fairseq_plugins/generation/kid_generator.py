"""KID inside fairseq: a ``SequenceGenerator`` whose model wrapper returns KID-updated lprobs.

Like fairseq's ``SequenceGeneratorWithAlignment``, :class:`KIDSequenceGenerator` does not copy
``_generate``; it wraps the ensemble in :class:`KIDEnsembleModel`, whose

* ``forward_decoder`` feeds each hypothesis' newest token to its entity memory, collects the
  demonstrations and returns the policy-updated log-probs pi* of shape (batch x beam, vocab),
  from which the unchanged search (beam, sampling, top-k/p, greedy, ...) picks;
* ``reorder_incremental_state`` -- which ``_generate`` calls with ``reorder_state`` before
  every step after the first, after selecting, duplicating and pruning hypotheses --
  reorders the memories and per-hypothesis betas the same way.

Per-example knowledge: ``sample["id"]`` (the dataset index of each input) selects the line of
the trie file. fairseq-interactive numbers inputs from 0 in every buffer, so there use
``--kid-shared-trie`` (line 0 for every input, memory initialised from the input's words).

Plain decoding (bit-identical search inputs) when ``--kid-steps 0`` or when the trie file holds
no knowledge (one warning when the file is loaded). Rows whose example has an empty trie, or
whose memory reaches no knowledge, keep the model's distribution exactly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from fairseq.sequence_generator import EnsembleModel, SequenceGenerator
from informative_dialogue.kid.memory import EntityMemory, KIDCore, KIDOptions
from informative_dialogue.kid.trie_files import TrieStore
from informative_dialogue.kid.token_mapping import TokenMapper, load_gpt2_symbol_map

logger = logging.getLogger(__name__)

__all__ = ["KIDEnsembleModel", "KIDSequenceGenerator", "KIDTaskMixin", "build_kid_core"]


@dataclass
class _KIDBatch:
    """State of the batch being generated.

    Attributes:
        memory: the (N,) per-hypothesis memories and betas.
        trie_indices: trie file line of each original sentence.
        prefix_len: forced prefix length of each original sentence (0 without prefix).
    """

    memory: EntityMemory
    trie_indices: List[int]
    prefix_len: List[int]


class KIDEnsembleModel(EnsembleModel):
    """``EnsembleModel`` whose ``forward_decoder`` returns KID-updated log-probs (N, V)."""

    def __init__(self, models, kid_core: Optional[KIDCore]) -> None:
        super().__init__(models)
        self.kid_core = kid_core
        self.kid_batch: Optional[_KIDBatch] = None

    def reorder_incremental_state(self, incremental_states, new_order) -> None:
        if self.kid_batch is not None:
            self.kid_batch.memory.reorder(new_order)
        super().reorder_incremental_state(incremental_states, new_order)

    def forward_decoder(self, tokens: Tensor, encoder_outs, incremental_states, temperature: float = 1.0):
        """``tokens``: (N, step + 1) prefixes; returns ((N, V) log-probs, attention)."""
        lprobs, attn = super().forward_decoder(tokens, encoder_outs, incremental_states, temperature)
        batch = self.kid_batch
        if batch is None or self.kid_core is None:
            return lprobs, attn
        mem = batch.memory
        if lprobs.size(0) != len(mem):
            raise RuntimeError(f"KID: {lprobs.size(0)} hypotheses but {len(mem)} memories (reordering lost)")
        step = tokens.size(1) - 1
        if step > 0:
            self.kid_core.observe(mem, tokens[:, -1], batch.trie_indices)
        active: Optional[List[bool]] = None
        if any(batch.prefix_len):
            active = [step >= batch.prefix_len[s] for s in mem.sentence]
        return self.kid_core.update(lprobs, mem, batch.trie_indices, active), attn


class KIDSequenceGenerator(SequenceGenerator):
    """fairseq ``SequenceGenerator`` with knowledge-infused decoding.

    Args:
        models: the ensemble.
        tgt_dict: target dictionary.
        kid_core: the :class:`KIDCore` (``None``: plain decoding).
        kid_src_dict: source dictionary, to read the inputs' words (default: ``tgt_dict``).
        **kwargs: ``SequenceGenerator`` arguments (beam size, search strategy, ...).
    """

    def __init__(self, models, tgt_dict, kid_core: Optional[KIDCore] = None, kid_src_dict=None, **kwargs: Any) -> None:
        if kwargs.get("lm_model") is not None:
            logger.info("KID: the update acts on the translation model's distribution, before --lm-weight fusion")
        super().__init__(KIDEnsembleModel(models, kid_core), tgt_dict, **kwargs)
        self.kid_core = kid_core
        self.kid_src_mapper: Optional[TokenMapper] = None
        if kid_core is not None:
            if kid_src_dict is None or kid_src_dict is tgt_dict:
                self.kid_src_mapper = kid_core.mapper
            else:
                self.kid_src_mapper = TokenMapper.from_fairseq_dictionary(kid_src_dict)

    @torch.no_grad()
    def generate(self, models, sample: Dict[str, Dict[str, Tensor]], **kwargs):
        core = self.kid_core
        if core is None or core.disabled:
            return self._generate(sample, **kwargs)
        src_tokens = sample["net_input"]["src_tokens"]
        bsz = src_tokens.size(0)
        if "id" in sample and isinstance(sample["id"], Tensor):
            trie_indices = [int(i) for i in sample["id"].tolist()]
        else:
            trie_indices = list(range(bsz))
        source_words = [self.kid_src_mapper.decode_words(row.tolist()) for row in src_tokens]
        prefix = kwargs.get("prefix_tokens")
        prefix_len = [0] * bsz if prefix is None else prefix.ne(self.pad).sum(dim=1).tolist()
        memory = core.new_memory(trie_indices, source_words, self.beam_size, src_tokens.device)
        self.model.kid_batch = _KIDBatch(memory, trie_indices, [int(p) for p in prefix_len])
        try:
            return self._generate(sample, **kwargs)
        finally:
            self.model.kid_batch = None


def build_kid_core(cfg, tgt_dict) -> KIDCore:
    """The :class:`KIDCore` of a task config carrying :class:`~.kid_config.KIDConfig` fields."""
    if not cfg.kid_trie:
        raise ValueError("--kid needs --kid-trie FILE (knowledge trie JSONL)")
    options = KIDOptions(
        hops=cfg.kid_hops,
        window=cfg.kid_memory,
        steps=cfg.kid_steps,
        lr=cfg.kid_lr,
        sigma=cfg.kid_sigma,
        beta_init=cfg.kid_beta,
        mode=str(cfg.kid_mode),
        entity=str(cfg.kid_entity),
    )
    symbol_map = load_gpt2_symbol_map(cfg.kid_gpt2_encoder_json) if cfg.kid_gpt2_encoder_json else None
    mapper = TokenMapper.from_fairseq_dictionary(
        tgt_dict, scheme=str(cfg.kid_vocab_scheme), subwords=str(cfg.kid_subwords), symbol_map=symbol_map
    )
    store = TrieStore(cfg.kid_trie, shared=cfg.kid_shared_trie)
    logger.info(
        "KID: %s, hops %d, memory %d, K %d, lr %g, sigma %g, %s-subword tokens (%s vocabulary), %d tries",
        options.mode, options.hops, options.memory_window, options.steps, options.lr, options.sigma,
        mapper.subwords, mapper.scheme, len(store),
    )
    return KIDCore(store, mapper, options)


class KIDTaskMixin:
    """Task mixin: ``build_generator`` returns a :class:`KIDSequenceGenerator` under ``--kid``.

    Put it before the fairseq task class: ``class MyTask(KIDTaskMixin, TranslationTask)``;
    the task's ``cfg`` (or ``args`` for legacy tasks) must carry the
    :class:`~.kid_config.KIDConfig` fields.
    """

    def build_generator(
        self,
        models,
        args,
        seq_gen_cls=None,
        extra_gen_cls_kwargs: Optional[Dict[str, Any]] = None,
        prefix_allowed_tokens_fn=None,
    ):
        # FairseqTask keeps its config in .cfg, LegacyFairseqTask (language_modeling) in .args
        cfg = getattr(self, "cfg", None) or getattr(self, "args", None)
        if getattr(cfg, "kid", False) and not getattr(args, "score_reference", False):
            if seq_gen_cls is not None or getattr(args, "print_alignment", False):
                raise ValueError("--kid cannot be combined with another generator class or --print-alignment")
            seq_gen_cls = KIDSequenceGenerator
            extra_gen_cls_kwargs = dict(extra_gen_cls_kwargs or {})
            extra_gen_cls_kwargs["kid_core"] = build_kid_core(cfg, self.target_dictionary)  # type: ignore[attr-defined]
            extra_gen_cls_kwargs["kid_src_dict"] = self.source_dictionary  # type: ignore[attr-defined]
        return super().build_generator(  # type: ignore[misc]
            models,
            args,
            seq_gen_cls=seq_gen_cls,
            extra_gen_cls_kwargs=extra_gen_cls_kwargs,
            prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
        )
