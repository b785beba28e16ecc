"""KID as a Hugging Face logits processor for ``model.generate``.

The same per-step update as the fairseq generator (:class:`~informative_dialogue.kid.memory.KIDCore`
and :func:`~informative_dialogue.kid.policy_update.kid_policy_update`) on the whole
``(batch x rows, vocab)`` score tensor::

    from transformers import LogitsProcessorList
    from informative_dialogue.kid.hf_processor import KIDLogitsProcessor
    proc = KIDLogitsProcessor(tries, tokenizer, rows_per_input=num_beams)          # the defaults
    proc = KIDLogitsProcessor(tries, tokenizer, rows_per_input=num_beams, lr=0.5)  # or keywords
    proc = KIDLogitsProcessor(tries, tokenizer, options=KIDOptions(lr=0.5))        # or an options object
    model.generate(**enc, logits_processor=LogitsProcessorList([proc]), num_beams=num_beams)

:class:`KIDLogitsProcessor` is a plain class with ``__call__(input_ids, scores) -> scores``:
``transformers``' ``LogitsProcessorList`` only calls its members (no type check), so this
module imports neither ``transformers`` nor ``fairseq``, and not even ``torch`` until the first
processor is built (importing it costs a fraction of a second).

Hugging Face gives no reordering hook, so the processor follows the search by prefix: the row
that carries ``input_ids[j, :-1]`` at this step continues the hypothesis that ended with it
at the previous step (duplicated hypotheses share a prefix and therefore a memory, which is
exact). A call whose ``input_ids`` are not one token longer than the previous call's starts a
new generation (memories re-initialised), so a processor may be reused across ``generate``
calls but not interleaved between two generations.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from informative_dialogue.kid.options import KIDOptions
from informative_dialogue.kid.trie import KnowledgeTrie
from informative_dialogue.kid.trie_files import InMemoryTries, TrieExample
from informative_dialogue.kid.token_mapping import TokenMapper

if TYPE_CHECKING:  # torch is imported when the first processor is built (through the core)
    import torch
    from torch import Tensor

    from informative_dialogue.kid.memory import EntityMemory, KIDCore

logger = logging.getLogger(__name__)

__all__ = ["KIDLogitsProcessor", "KIDProcessorState"]


class KIDProcessorState:
    """The mutable part of a :class:`KIDLogitsProcessor` (one generation at a time).

    Args:
        core: the shared :class:`~informative_dialogue.kid.memory.KIDCore`.
        rows_per_input: rows of ``input_ids`` per input (``num_beams`` for beam search,
            ``num_return_sequences`` for sampling).
        shared: one trie for every input.
    """

    def __init__(self, core: "KIDCore", rows_per_input: int, shared: bool) -> None:
        self.core = core
        self.rows_per_input = rows_per_input
        self.shared = shared
        self.memory: Optional["EntityMemory"] = None
        self.trie_indices: List[int] = []
        self.length = -1
        self.row_of: Dict[Tuple[int, ...], int] = {}

    def start(self, input_ids: "Tensor", device: "torch.device") -> None:
        """New generation from prompts ``input_ids`` (N, L)."""
        n = input_ids.size(0)
        if n % self.rows_per_input:
            raise ValueError(f"{n} rows are not a multiple of rows_per_input={self.rows_per_input}")
        n_inputs = n // self.rows_per_input
        self.trie_indices = [0 if self.shared else i for i in range(n_inputs)]
        words = [
            self.core.mapper.decode_words(input_ids[i * self.rows_per_input].tolist()) for i in range(n_inputs)
        ]
        self.memory = self.core.new_memory(self.trie_indices, words, self.rows_per_input, device)

    def follow(self, input_ids: "Tensor") -> bool:
        """Reorder the memories to the rows of ``input_ids`` (N, L) and feed the new tokens;
        False (nothing changed) when a row continues no row of the previous step."""
        import torch

        assert self.memory is not None
        order: List[int] = []
        for row in input_ids[:, :-1].tolist():
            parent = self.row_of.get(tuple(row))
            if parent is None:
                return False
            order.append(parent)
        self.memory.reorder(torch.tensor(order, dtype=torch.long))
        self.core.observe(self.memory, input_ids[:, -1], self.trie_indices)
        return True


class KIDLogitsProcessor:
    """Knowledge-infused decoding as a logits processor: ``(input_ids, scores) -> scores``.

    Args:
        tries: the knowledge of each input, in batch order (:class:`TrieExample` with its
            initial ``entities``, or a bare :class:`KnowledgeTrie`); a single one with
            ``shared=True`` serves every input.
        tokenizer: a Hugging Face tokenizer (words are segmented with it), or a
            :class:`TokenMapper` over the model's vocabulary (its ``subwords`` must equal the
            options').
        rows_per_input: rows per input in ``input_ids`` (``num_beams`` for beam search,
            ``num_return_sequences`` for sampling, 1 for greedy).
        shared: use ``tries[0]`` for every input.
        options: a :class:`~informative_dialogue.kid.options.KIDOptions`.
        **kid: or the options as keywords (``hops``, ``memory``, ``steps``, ``lr``, ``sigma``,
            ``beta``, ``mode``, ``entity``, ``subwords``, ``allow_empty_tries``, ``solver``; names,
            defaults and meaning: :class:`~informative_dialogue.kid.options.KIDOptions`).
            Giving ``options`` and keywords together is a ValueError.

    Raises:
        ValueError: invalid options or arguments; ``solver="kv"`` (it needs the model:
            :func:`~informative_dialogue.kid.hf_kv_decoding.kid_kv_generate`); every trie empty
            without ``allow_empty_tries`` (see :class:`~informative_dialogue.kid.memory.KIDCore`).

    ``__call__`` takes ``input_ids`` (N, L) and ``scores`` (N, V) and returns a new (N, V)
    tensor: rows with demonstrations hold ``log pi* + logsumexp(scores)`` (the updated
    policy at the scale of the input), the other rows are the input scores unchanged.
    """

    def __init__(
        self,
        tries: Union[Sequence[Union[TrieExample, KnowledgeTrie]], KnowledgeTrie, TrieExample],
        tokenizer: Any,
        rows_per_input: int = 1,
        shared: bool = False,
        options: Optional[KIDOptions] = None,
        **kid: Any,
    ) -> None:
        from informative_dialogue.kid.memory import KIDCore  # imports torch

        if options is not None and kid:
            raise ValueError(f"give the KID options either as options= or as keywords, not both "
                             f"(keywords given: {', '.join(sorted(kid))})")
        if options is None:
            options = KIDOptions(**kid)  # TypeError for an unknown name
        elif not isinstance(options, KIDOptions):
            raise TypeError(f"options must be a KIDOptions, got {type(options).__name__}")
        if options.solver == "kv":
            raise ValueError("KIDLogitsProcessor cannot do --kid-solver kv / solver='kv': the key/value update "
                             "perturbs the model's cache, which a logits processor cannot reach; decode with "
                             "informative_dialogue.kid.hf_kv_decoding.kid_kv_generate(model, ...) instead")
        if isinstance(tries, (KnowledgeTrie, TrieExample)):
            tries, shared = [tries], True
        tries = list(tries)
        if not tries:
            raise ValueError("KIDLogitsProcessor needs at least one trie")
        if shared and len(tries) != 1:
            raise ValueError("shared=True takes exactly one trie")
        if not isinstance(rows_per_input, int) or rows_per_input < 1:
            raise ValueError(f"rows_per_input must be a positive int, got {rows_per_input!r}")
        if isinstance(tokenizer, TokenMapper):
            mapper = tokenizer
        elif hasattr(tokenizer, "convert_ids_to_tokens") and hasattr(tokenizer, "all_special_ids"):
            mapper = TokenMapper.from_hf_tokenizer(tokenizer, subwords=options.subwords)
        else:
            raise TypeError("tokenizer must be a Hugging Face tokenizer or a TokenMapper")
        self.core = KIDCore(InMemoryTries(tries, shared=shared), mapper, options)
        self.state = KIDProcessorState(self.core, rows_per_input, shared)
        self.n_inputs = None if shared else len(tries)

    @property
    def options(self) -> KIDOptions:
        """The options in use."""
        return self.core.options

    def __call__(self, input_ids: "Tensor", scores: "Tensor") -> "Tensor":
        """``input_ids`` (N, L), ``scores`` (N, V) -> new (N, V) scores (input untouched)."""
        import torch

        if scores.dim() != 2 or input_ids.size(0) != scores.size(0):
            raise ValueError(f"expected input_ids (N, L) and scores (N, V), got {tuple(input_ids.shape)}, "
                             f"{tuple(scores.shape)}")
        if self.core.disabled:
            return scores
        st = self.state
        if input_ids.size(1) != st.length + 1 or st.memory is None or not st.follow(input_ids):
            n_inputs = input_ids.size(0) // st.rows_per_input
            if self.n_inputs is not None and n_inputs != self.n_inputs:
                raise ValueError(f"{n_inputs} inputs in the batch but {self.n_inputs} tries given")
            st.start(input_ids, scores.device)
        st.length = input_ids.size(1)
        st.row_of = {tuple(r): i for i, r in enumerate(input_ids.tolist())}
        log_probs = scores.float().log_softmax(dim=-1)
        res = self.core.update_result(log_probs, st.memory, st.trie_indices)
        if not bool(res.updated.any()):
            return scores
        shift = torch.logsumexp(scores.float(), dim=-1, keepdim=True)
        new = (res.log_probs + shift).to(scores.dtype)
        return torch.where(res.updated.unsqueeze(1), new, scores)
