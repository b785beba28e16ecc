"""KID as a Hugging Face ``LogitsProcessor`` for ``model.generate``.

The same per-step update as the fairseq generator (:class:`~.entity_memory.KIDCore` and
:func:`~.policy_update.kid_policy_update`) on the whole ``(batch x rows, vocab)`` score
tensor::

    from informative_dialogue.kid.hf_processor import KIDLogitsProcessor
    proc = KIDLogitsProcessor(tries, tokenizer, rows_per_input=num_beams)
    model.generate(**enc, logits_processor=LogitsProcessorList([proc]), num_beams=num_beams)

Hugging Face gives no reordering hook, so the processor follows the search by prefix: the row
that carries ``input_ids[j, :-1]`` at this step continues the hypothesis that ended with it
at the previous step (duplicated hypotheses share a prefix and therefore a memory, which is
exact). A call whose ``input_ids`` are not one token longer than the previous call's starts a
new generation (memories re-initialised), so a processor may be reused across ``generate``
calls but not interleaved between two generations.

``transformers`` is imported when :class:`KIDLogitsProcessor` is first accessed, so importing
this module (as ``--user-dir`` does for every fairseq command) costs nothing.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from informative_dialogue.kid.memory import EntityMemory, KIDCore, KIDOptions
from informative_dialogue.kid.trie import KnowledgeTrie
from informative_dialogue.kid.trie_files import InMemoryTries, TrieExample
from informative_dialogue.kid.token_mapping import TokenMapper

logger = logging.getLogger(__name__)

__all__ = ["KIDLogitsProcessor", "KIDProcessorState"]


class KIDProcessorState:
    """The mutable part of a :class:`KIDLogitsProcessor` (one generation at a time).

    Args:
        core: the shared :class:`KIDCore`.
        rows_per_input: rows of ``input_ids`` per input (``num_beams`` for beam search,
            ``num_return_sequences`` for sampling).
        shared: one trie for every input.
    """

    def __init__(self, core: KIDCore, rows_per_input: int, shared: bool) -> None:
        self.core = core
        self.rows_per_input = rows_per_input
        self.shared = shared
        self.memory: Optional[EntityMemory] = None
        self.trie_indices: List[int] = []
        self.length = -1
        self.row_of: Dict[Tuple[int, ...], int] = {}

    def start(self, input_ids: Tensor, device: torch.device) -> None:
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

    def follow(self, input_ids: Tensor) -> bool:
        """Reorder the memories to the rows of ``input_ids`` (N, L) and feed the new tokens;
        False (nothing changed) when a row continues no row of the previous step."""
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


def _build_class():
    from transformers.generation.logits_process import LogitsProcessor

    class KIDLogitsProcessor(LogitsProcessor):
        """Knowledge-infused decoding as a ``LogitsProcessor``: ``(input_ids, scores) -> scores``.

        Args:
            tries: the knowledge of each input, in batch order (:class:`TrieExample` with its
                initial ``entities``, or a bare :class:`KnowledgeTrie`); a single one with
                ``shared=True`` serves every input.
            tokenizer: a Hugging Face tokenizer (words are segmented with it), or a
                :class:`TokenMapper` over the model's vocabulary.
            rows_per_input: rows per input in ``input_ids`` (``num_beams`` for beam search,
                ``num_return_sequences`` for sampling, 1 for greedy).
            shared: use ``tries[0]`` for every input.
            hops, memory, steps, lr, sigma, beta_init, mode, entity: see
                :class:`~.entity_memory.KIDOptions` (``memory`` = w_max).
            subwords: ``first`` or ``all`` subwords of each knowledge word.
            options: a :class:`~.entity_memory.KIDOptions`; when given, the keyword values of
                hops, memory, steps, lr, sigma, beta_init, mode and entity are ignored.

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
            hops: int = 4,
            memory: Optional[int] = None,
            steps: int = 3,
            lr: float = 0.1,
            sigma: float = 0.02,
            beta_init: float = 1.0,
            mode: str = "kid",
            entity: str = "key",
            subwords: str = "first",
            options: Optional[KIDOptions] = None,
        ) -> None:
            if isinstance(tries, (KnowledgeTrie, TrieExample)):
                tries, shared = [tries], True
            tries = list(tries)
            if not tries:
                raise ValueError("KIDLogitsProcessor needs at least one trie")
            if shared and len(tries) != 1:
                raise ValueError("shared=True takes exactly one trie")
            if not isinstance(rows_per_input, int) or rows_per_input < 1:
                raise ValueError(f"rows_per_input must be a positive int, got {rows_per_input!r}")
            if options is None:
                options = KIDOptions(
                    hops=hops, window=memory, steps=steps, lr=lr, sigma=sigma,
                    beta_init=beta_init, mode=mode, entity=entity,
                )
            if isinstance(tokenizer, TokenMapper):
                if tokenizer.subwords != subwords:
                    raise ValueError(f"the TokenMapper uses subwords={tokenizer.subwords!r}, not {subwords!r}")
                mapper = tokenizer
            elif hasattr(tokenizer, "convert_ids_to_tokens") and hasattr(tokenizer, "all_special_ids"):
                mapper = TokenMapper.from_hf_tokenizer(tokenizer, subwords=subwords)
            else:
                raise TypeError("tokenizer must be a Hugging Face tokenizer or a TokenMapper")
            self.core = KIDCore(InMemoryTries(tries, shared=shared), mapper, options)
            self.state = KIDProcessorState(self.core, rows_per_input, shared)
            self.n_inputs = None if shared else len(tries)

        def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
            if scores.dim() != 2 or input_ids.size(0) != scores.size(0):
                raise ValueError(f"expected input_ids (N, L) and scores (N, V), got {tuple(input_ids.shape)}, {tuple(scores.shape)}")
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

    KIDLogitsProcessor.__module__ = __name__
    return KIDLogitsProcessor


def __getattr__(name: str):
    if name == "KIDLogitsProcessor":
        cls = _build_class()
        globals()[name] = cls  # define the class once, on first use
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
