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

Under ``--kid-solver kv`` (the KID release's key/value update, :mod:`.kv_state`) the wrapper
keeps, per batch, a second incremental state whose decoder self-attention keys/values carry the
perturbations, reorders it with the plain one, and returns the geometric mixture of its
distribution and the plain one (one model only; a fairseq transformer decoder).

Plain decoding (bit-identical search inputs) when ``--kid-steps 0``. Rows whose example has an
empty trie, or whose memory reaches no knowledge, keep the model's distribution exactly.

Checked before decoding starts: the KID options (a NaN, infinite or non-positive ``--kid-lr``,
``--kid-sigma`` or ``--kid-beta`` is an error naming the flag, already when the task is set up);
a trie file whose tries are all empty is an error unless ``--kid-allow-empty-tries`` (then plain
decoding with one warning); and, when the task has loaded exactly one dataset (fairseq-generate
loads ``--gen-subset`` only), the trie file must have one line per example of it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from fairseq.sequence_generator import EnsembleModel, SequenceGenerator
from informative_dialogue.kid.memory import EntityMemory, KIDCore
from informative_dialogue.kid.options import KIDOptions
from informative_dialogue.kid.trie_files import TrieStore
from informative_dialogue.kid.token_mapping import TokenMapper, load_gpt2_symbol_map
from fairseq_plugins.generation.kv_state import KVDecoderState, self_attention_modules
from fairseq_plugins.generation.paired_sampling import apply_sampling_seed_scope

logger = logging.getLogger(__name__)

__all__ = ["KIDEnsembleModel", "KIDSequenceGenerator", "KIDTaskMixin", "build_kid_core", "kid_options"]


@dataclass
class _KIDBatch:
    """State of the batch being generated.

    Attributes:
        memory: the (N,) per-hypothesis memories and betas.
        trie_indices: trie file line of each original sentence.
        prefix_len: forced prefix length of each original sentence (0 without prefix).
        kv: the perturbed incremental state (``--kid-solver kv`` only).
    """

    memory: EntityMemory
    trie_indices: List[int]
    prefix_len: List[int]
    kv: Optional[KVDecoderState] = None


class KIDEnsembleModel(EnsembleModel):
    """``EnsembleModel`` whose ``forward_decoder`` returns KID-updated log-probs (N, V)."""

    def __init__(self, models, kid_core: Optional[KIDCore]) -> None:
        super().__init__(models)
        self.kid_core = kid_core
        self.kid_batch: Optional[_KIDBatch] = None

    def reorder_incremental_state(self, incremental_states, new_order) -> None:
        if self.kid_batch is not None:
            self.kid_batch.memory.reorder(new_order)
            if self.kid_batch.kv is not None:
                self.kid_batch.kv.reorder(new_order)
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
        if batch.kv is not None:
            core, vocab = self.kid_core, lprobs.size(1)
            return batch.kv.decode(
                tokens, encoder_outs[0] if self.has_encoder() else None, lprobs,
                lambda: core.demo_index(mem, batch.trie_indices, vocab, lprobs.device, active), temperature,
            ), attn
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
        if kid_core is not None and kid_core.options.solver == "kv":
            if len(models) != 1:
                raise ValueError(f"--kid-solver kv decodes with one model, got an ensemble of {len(models)}")
            self_attention_modules(models[0])  # ValueError unless a fairseq transformer decoder
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
        kv = KVDecoderState(self.model.single_model, core.options) if core.options.solver == "kv" else None
        self.model.kid_batch = _KIDBatch(memory, trie_indices, [int(p) for p in prefix_len], kv)
        try:
            return self._generate(sample, **kwargs)
        finally:
            self.model.kid_batch = None


def kid_options(cfg: Any) -> KIDOptions:
    """The :class:`KIDOptions` of a config carrying :class:`~.kid_config.KIDConfig` fields
    (``kid_NAME`` for every option ``NAME``); ValueError naming the flag when one is invalid."""
    values = {}
    for f in fields(KIDOptions):
        value = getattr(cfg, "kid_" + f.name)
        values[f.name] = value.value if isinstance(value, Enum) else value  # fairseq ChoiceEnum -> str
    return KIDOptions(**values)


def build_kid_core(cfg: Any, tgt_dict: Any, n_examples: Optional[int] = None) -> KIDCore:
    """The :class:`KIDCore` of a task config carrying :class:`~.kid_config.KIDConfig` fields.

    Args:
        cfg: the task config (``--kid-*`` flags).
        tgt_dict: the target dictionary (fairseq ``Dictionary``).
        n_examples: size of the generation subset, if known: the trie file (unless shared) must
            have exactly this many lines.

    Raises:
        ValueError: no ``--kid-trie``, invalid options, a trie file with no knowledge (without
            ``--kid-allow-empty-tries``) or with a line count other than ``n_examples``.
    """
    if not cfg.kid_trie:
        raise ValueError("--kid needs --kid-trie FILE (knowledge trie JSONL)")
    options = kid_options(cfg)
    symbol_map = load_gpt2_symbol_map(cfg.kid_gpt2_encoder_json) if cfg.kid_gpt2_encoder_json else None
    mapper = TokenMapper.from_fairseq_dictionary(
        tgt_dict, scheme=str(cfg.kid_vocab_scheme), subwords=options.subwords, symbol_map=symbol_map
    )
    store = TrieStore(cfg.kid_trie, shared=cfg.kid_shared_trie)
    if n_examples is not None and not store.shared and len(store) != n_examples:
        raise ValueError(
            f"KID: --kid-trie {cfg.kid_trie} has {len(store)} lines but the generation subset has {n_examples} "
            "examples: line i must be the trie of example i (build the tries from the same subset)"
        )
    solver = (f"kv (step {options.kv_step:g}, KL scale {options.kv_kl:g}, gamma {options.kv_gamma:g}, "
              f"mix {options.kv_mix:g})" if options.solver == "kv" else
              f"{options.solver}, lr {options.lr:g}, sigma {options.sigma:g}, beta {options.beta:g}")
    logger.info("KID: %s, hops %d, memory %d, K %d, solver %s, %s-subword tokens (%s vocabulary), %d tries",
                options.mode, options.hops, options.memory, options.steps, solver, mapper.subwords, mapper.scheme,
                len(store))
    return KIDCore(store, mapper, options)


class KIDTaskMixin:
    """Task mixin: ``build_generator`` returns a :class:`KIDSequenceGenerator` under ``--kid``, and
    gives it (or the plain generator) per-example random draws under ``--sampling-seed-scope example``
    (:mod:`~fairseq_plugins.generation.paired_sampling`; the config must carry its field too).

    Put it before the fairseq task class: ``class MyTask(KIDTaskMixin, TranslationTask)``;
    the task's ``cfg`` (or ``args`` for legacy tasks) must carry the
    :class:`~.kid_config.KIDConfig` fields. Under ``--kid`` the options are validated when the
    task is built (before any model is loaded), the trie file when the generator is built.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        cfg = self._kid_cfg()
        if getattr(cfg, "kid", False):
            kid_options(cfg)  # fail fast: ValueError naming the flag

    def _kid_cfg(self) -> Any:
        # FairseqTask keeps its config in .cfg, LegacyFairseqTask (language_modeling) in .args
        return getattr(self, "cfg", None) or getattr(self, "args", None)

    def _kid_subset_size(self) -> Optional[int]:
        """Size of the generation subset: the one dataset loaded (fairseq-generate loads only
        ``--gen-subset``); None when none or several are loaded (fairseq-interactive, training)."""
        datasets = getattr(self, "datasets", None) or {}
        if len(datasets) != 1:
            return None
        return len(next(iter(datasets.values())))

    def build_generator(
        self,
        models,
        args,
        seq_gen_cls=None,
        extra_gen_cls_kwargs: Optional[Dict[str, Any]] = None,
        prefix_allowed_tokens_fn=None,
    ):
        cfg = self._kid_cfg()
        if getattr(cfg, "kid", False) and not getattr(args, "score_reference", False):
            if seq_gen_cls is not None or getattr(args, "print_alignment", False):
                raise ValueError("--kid cannot be combined with another generator class or --print-alignment")
            seq_gen_cls = KIDSequenceGenerator
            extra_gen_cls_kwargs = dict(extra_gen_cls_kwargs or {})
            extra_gen_cls_kwargs["kid_core"] = build_kid_core(
                cfg, self.target_dictionary, n_examples=self._kid_subset_size()  # type: ignore[attr-defined]
            )
            extra_gen_cls_kwargs["kid_src_dict"] = self.source_dictionary  # type: ignore[attr-defined]
        generator = super().build_generator(  # type: ignore[misc]
            models,
            args,
            seq_gen_cls=seq_gen_cls,
            extra_gen_cls_kwargs=extra_gen_cls_kwargs,
            prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
        )
        return apply_sampling_seed_scope(generator, cfg, args, self.target_dictionary)  # type: ignore[attr-defined]
