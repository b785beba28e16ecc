"""Local knowledge memory G_loc of KID (appendix A.2.2, Algorithm 2), one per hypothesis.

A batch of ``N = batch x beam`` hypotheses each holds:

* ``sentence[i]``: the position, in the original batch, of the input the hypothesis
  belongs to (fairseq drops finished sentences, so rows and positions drift apart);
* ``memory[i]``: a FIFO tuple of entity keys (stems), oldest first, at most ``window``
  (w_max) long. Pushing an entity already in the memory moves it to the newest end, so the
  memory holds distinct entities ordered by last mention; pushing onto a full memory drops
  the oldest;
* the word being generated (the pieces since the last word start), so that an entity enters
  the memory when its *word completes* -- when the next piece starts a new word, or a
  boundary (punctuation, EOS) arrives -- never on a partial subword;
* ``beta[i]``: the hypothesis' adaptive KL weight, a ``(N,)`` tensor on the decoding device.

:meth:`EntityMemory.reorder` follows the search: fairseq's ``_generate`` (and a Hugging
Face beam search) reorders, duplicates and prunes hypotheses between steps by an index
vector ``new_order`` (``reorder_state`` in fairseq, with finished sentences already
accounted for); row ``j`` of the reordered memory is old row ``new_order[j]``. Memories are
immutable tuples, so reordering copies references only.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from informative_dialogue.kid.options import KIDOptions, flag, unused_options
from informative_dialogue.kid.trie import WordNormalizer
from informative_dialogue.kid.trie_files import InMemoryTries, TrieStore
from informative_dialogue.kid.policy_update import PolicyUpdateResult, kid_policy_update
from informative_dialogue.kid.sigma_solver import pairs_to_index, sigma_solve
from informative_dialogue.kid.token_mapping import TokenMapper

logger = logging.getLogger(__name__)

__all__ = ["EntityMemory", "push_fifo", "KIDCore"]

Memory = Tuple[str, ...]


def push_fifo(memory: Memory, key: str, window: int) -> Memory:
    """``memory`` with ``key`` appended as newest (moved there if present), cut to ``window``."""
    if window <= 0:
        return ()
    items = tuple(k for k in memory if k != key) + (key,)
    return items[-window:]


class EntityMemory:
    """Per-hypothesis FIFO entity memories of a batch (see module doc).

    Args:
        sentences: (N,) original batch position of every row's input.
        memories: (N,) initial memories (tuples of keys, oldest first).
        window: w_max, the memory length.
        beta: (N,) initial KL weights.
    """

    def __init__(self, sentences: Sequence[int], memories: Sequence[Memory], window: int, beta: Tensor) -> None:
        if len(sentences) != len(memories) or beta.shape != (len(sentences),):
            raise ValueError("sentences, memories and beta must all have N rows")
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        self.window = window
        self.sentence: List[int] = list(sentences)
        self.memory: List[Memory] = [tuple(m)[-window:] if window else () for m in memories]
        self.partial: List[str] = [""] * len(sentences)
        self.joins: List[bool] = [False] * len(sentences)
        self.beta = beta

    @classmethod
    def for_batch(
        cls,
        initial_keys: Sequence[Sequence[str]],
        window: int,
        beam_size: int,
        beta_init: float,
        device: torch.device,
    ) -> "EntityMemory":
        """Rows ``s * beam_size + b`` for sentence ``s`` (fairseq's and Hugging Face's
        layout), memories filled by pushing each sentence's initial keys in order."""
        rows_ex: List[int] = []
        rows_mem: List[Memory] = []
        for sent, keys in enumerate(initial_keys):
            mem: Memory = ()
            for k in keys:
                mem = push_fifo(mem, k, window)
            rows_ex.extend([sent] * beam_size)
            rows_mem.extend([mem] * beam_size)
        beta = torch.full((len(rows_ex),), float(beta_init), dtype=torch.float32, device=device)
        return cls(rows_ex, rows_mem, window, beta)

    def __len__(self) -> int:
        return len(self.sentence)

    def reorder(self, new_order: Tensor) -> None:
        """Row ``j`` becomes old row ``new_order[j]`` (LongTensor (N_new,), any device)."""
        order = new_order.tolist()
        self.sentence = [self.sentence[i] for i in order]
        self.memory = [self.memory[i] for i in order]
        self.partial = [self.partial[i] for i in order]
        self.joins = [self.joins[i] for i in order]
        self.beta = self.beta.index_select(0, new_order.to(self.beta.device))

    def observe(
        self,
        tokens: Tensor,
        mapper: TokenMapper,
        entity_key: Callable[[int, str], Optional[str]],
    ) -> List[int]:
        """Feed the token each row just generated; push completed entity words.

        Args:
            tokens: (N,) the newest token of every row.
            mapper: decodes ids into word pieces.
            entity_key: ``(row, word) -> key or None``: the memory key of a completed word
                if it is an entity.

        Returns:
            the rows whose memory changed.
        """
        if tokens.shape != (len(self),):
            raise ValueError(f"tokens must be ({len(self)},), got {tuple(tokens.shape)}")
        changed: List[int] = []
        for row, tok in enumerate(tokens.tolist()):
            p = mapper.piece(tok)
            buf = self.partial[row]
            completed: Optional[str] = None
            if p.boundary or (p.starts_word and not self.joins[row]):
                if buf:
                    completed = mapper.finish_word(buf)
                self.partial[row] = "" if p.boundary else p.text
            else:
                self.partial[row] = buf + p.text
            self.joins[row] = p.joins_next and not p.boundary
            if completed:
                key = entity_key(row, completed)
                if key:
                    new = push_fifo(self.memory[row], key, self.window)
                    if new != self.memory[row]:
                        self.memory[row] = new
                        changed.append(row)
        return changed


class KIDCore:
    """Algorithm 2 around one model vocabulary: memory initialisation, entity test,
    demonstrations (query -> token ids), and the batched policy update of a step.

    Shared by the fairseq generator and the Hugging Face logits processor; all state of a
    batch lives in the :class:`EntityMemory` passed in, the core only caches
    demonstrations per (trie, memory). The update of a step is ``options.solver``'s: ``adam``
    (:func:`~informative_dialogue.kid.policy_update.kid_policy_update`, dense (N, V)
    demonstration mask, adaptive beta) or ``sigma``
    (:func:`~informative_dialogue.kid.sigma_solver.sigma_solve`, demonstrations as (N, D_max)
    token ids, KL(pi || pi*) = ``options.sigma`` on every row with demonstrations, beta
    unchanged); ``kv`` updates the model's cache, not log-probs (:meth:`update` refuses it).

    Args:
        tries: a :class:`TrieStore` or :class:`InMemoryTries`.
        mapper: the target vocabulary's :class:`TokenMapper`.
        options: :class:`~informative_dialogue.kid.options.KIDOptions`; ``options.subwords``
            must equal ``mapper.subwords``.
        cache_size: demonstrations cached (per (trie index, memory) pair).

    Raises:
        ValueError: the mapper's subword rule differs from the options', or every trie is
            empty (no knowledge: KID would be plain decoding) and ``options.allow_empty_tries``
            is false; with it, one warning instead. Options set away from their default that the
            solver ignores (:func:`~informative_dialogue.kid.options.unused_options`) log one warning.
    """

    def __init__(
        self,
        tries: Union[TrieStore, InMemoryTries],
        mapper: TokenMapper,
        options: KIDOptions,
        cache_size: int = 4096,
    ) -> None:
        if mapper.subwords != options.subwords:
            raise ValueError(f"the TokenMapper uses subwords={mapper.subwords!r} but the KID options say "
                             f"{flag('subwords')} {options.subwords}")
        if tries.all_empty:
            source = getattr(tries, "path", None) or "the knowledge tries"
            if not options.allow_empty_tries:
                raise ValueError(
                    f"KID: {source} holds no knowledge ({len(tries)} tries, all empty): decoding would be plain "
                    f"decoding; pass {flag('allow_empty_tries')} (allow_empty_tries=True) to decode plainly anyway"
                )
            logger.warning("KID: %s holds no knowledge (%d tries, all empty): decoding is plain decoding (%s)",
                           source, len(tries), flag("allow_empty_tries"))
        unused = unused_options(options)
        if unused:
            logger.warning("KID: %s unused under %s %s", " and ".join(unused), flag("solver"), options.solver)
        self.tries = tries
        self.mapper = mapper
        self.options = options
        self.normalizer: WordNormalizer = getattr(tries, "normalizer", None) or WordNormalizer()
        self.cache_size = cache_size
        self._demo_cache: Dict[Tuple[int, Memory], List[int]] = {}
        self._tensor_cache: Dict[Tuple[int, Memory, str], Tensor] = {}

    @property
    def disabled(self) -> bool:
        """True when decoding is plain: K = 0 or no knowledge at all in the tries."""
        return self.options.steps == 0 or bool(self.tries.all_empty)

    # -- memory ---------------------------------------------------------------------------
    def entity_key(self, trie_index: int, word: str) -> Optional[str]:
        """Memory key of a completed word if it is an entity (see ``KIDOptions.entity``)."""
        norm = self.normalizer
        w = norm.clean(word)
        if not norm.is_content(w):
            return None
        key = norm.stem(w)
        if self.options.entity == "key" and key not in self.tries[trie_index].trie:
            return None
        return key or None

    def initial_keys(self, trie_index: int, source_words: Sequence[str] = ()) -> List[str]:
        """G_loc at step 0: the example's ``entities`` (each content word, in order) or, when
        the trie file gives none, the entity words of the source text."""
        ex = self.tries[trie_index]
        keys: List[str] = []
        if ex.entities is not None and not getattr(self.tries, "shared", False):
            for ent in ex.entities:
                keys.extend(self.normalizer.stem(w) for w in self.normalizer.content_words(ent))
        else:
            for w in source_words:
                k = self.entity_key(trie_index, w)
                if k:
                    keys.append(k)
        return [k for k in keys if k]

    def new_memory(
        self,
        trie_indices: Sequence[int],
        source_words: Sequence[Sequence[str]],
        beam_size: int,
        device: torch.device,
    ) -> EntityMemory:
        """The memory of a new batch: sentence ``s`` uses trie ``trie_indices[s]``."""
        init = [
            self.initial_keys(t, words) if self.options.mode == "kid" and not self.tries.is_empty(t) else []
            for t, words in zip(trie_indices, source_words)
        ]
        return EntityMemory.for_batch(init, self.options.memory, beam_size, self.options.beta, device)

    def observe(self, state: EntityMemory, tokens: Tensor, trie_indices: Sequence[int]) -> None:
        """Feed the newest token of every row (N,) to the memory (a no-op for Little KID)."""
        if self.options.mode != "kid":
            return
        state.observe(tokens, self.mapper, lambda row, word: self.entity_key(trie_indices[state.sentence[row]], word))

    # -- demonstrations -------------------------------------------------------------------
    def demo_ids(self, trie_index: int, memory: Memory) -> List[int]:
        """Token ids of the step's demonstrations for one hypothesis (sorted, distinct)."""
        if self.options.mode == "little":
            memory = ()
        ck = (trie_index, memory)
        hit = self._demo_cache.get(ck)
        if hit is not None:
            return hit
        if self.tries.is_empty(trie_index):
            ids: List[int] = []
        else:
            trie = self.tries[trie_index].trie
            words = trie.all_words() if self.options.mode == "little" else trie.query(memory, self.options.hops)
            ids = self.mapper.words_to_ids(words)
        if len(self._demo_cache) >= self.cache_size:
            self._demo_cache.clear()
            self._tensor_cache.clear()
        self._demo_cache[ck] = ids
        return ids

    def _demo_tensor(self, trie_index: int, memory: Memory, device: torch.device) -> Tensor:
        if self.options.mode == "little":
            memory = ()
        ck = (trie_index, memory, str(device))
        t = self._tensor_cache.get(ck)
        if t is None:
            t = torch.tensor(self.demo_ids(trie_index, memory), dtype=torch.long, device=device)
            self._tensor_cache[ck] = t
        return t

    def _row_demo_ids(
        self,
        state: EntityMemory,
        trie_indices: Sequence[int],
        vocab_size: int,
        device: torch.device,
        active: Optional[Sequence[bool]] = None,
    ) -> Iterator[Tuple[int, Tensor]]:
        """``(row, ids)`` for every active row with demonstrations: ids (D_row,) long, those
        inside the vocabulary (``< vocab_size``)."""
        for row, (sent, mem) in enumerate(zip(state.sentence, state.memory)):
            if active is not None and not active[row]:
                continue
            ids = self._demo_tensor(trie_indices[sent], mem, device)
            if ids.numel():
                yield row, ids[ids < vocab_size]

    def demo_mask(
        self,
        state: EntityMemory,
        trie_indices: Sequence[int],
        vocab_size: int,
        device: torch.device,
        active: Optional[Sequence[bool]] = None,
    ) -> Tensor:
        """(N, V) bool mask of every row's demonstration tokens (rows not active: empty)."""
        flat = [ids + row * vocab_size for row, ids in self._row_demo_ids(state, trie_indices, vocab_size, device, active)]
        mask = torch.zeros(len(state) * vocab_size, dtype=torch.bool, device=device)
        if flat:
            mask[torch.cat(flat)] = True
        return mask.view(len(state), vocab_size)

    def demo_index(
        self,
        state: EntityMemory,
        trie_indices: Sequence[int],
        vocab_size: int,
        device: torch.device,
        active: Optional[Sequence[bool]] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Every row's demonstration tokens as ``(demo_index, demo_valid)``, both (N, D_max)
        (the index form of :meth:`demo_mask`, for the sigma-solver; rows not active: none)."""
        rows: List[Tensor] = []
        toks: List[Tensor] = []
        for row, ids in self._row_demo_ids(state, trie_indices, vocab_size, device, active):
            toks.append(ids)
            rows.append(torch.full_like(ids, row))
        if not toks:
            return pairs_to_index(torch.zeros(0, dtype=torch.long, device=device),
                                  torch.zeros(0, dtype=torch.long, device=device), len(state))
        return pairs_to_index(torch.cat(rows), torch.cat(toks), len(state))

    # -- the step -------------------------------------------------------------------------
    def update(
        self,
        log_probs: Tensor,
        state: EntityMemory,
        trie_indices: Sequence[int],
        active: Optional[Sequence[bool]] = None,
    ) -> Tensor:
        """KID-updated log-probs (N, V) of a step; updates ``state.beta``. Input untouched."""
        return self.update_result(log_probs, state, trie_indices, active).log_probs

    def update_result(
        self,
        log_probs: Tensor,
        state: EntityMemory,
        trie_indices: Sequence[int],
        active: Optional[Sequence[bool]] = None,
    ) -> PolicyUpdateResult:
        """:meth:`update` with the full :class:`PolicyUpdateResult` (KL, updated rows).

        ``options.solver`` picks the update (class doc); both return a
        :class:`PolicyUpdateResult` (under ``sigma`` its ``beta`` is ``state.beta``, unchanged).
        ``options.steps == 0`` changes nothing under either solver (a clone of the input).

        Raises:
            ValueError: under ``solver="kv"``, which updates the model's cache, not log-probs.
        """
        o = self.options
        if o.solver == "kv":
            raise ValueError(f"KID: {flag('solver')} kv perturbs the model's cached keys/values and needs the model: "
                             "decode with fairseq_plugins.generation.kid_generator.KIDSequenceGenerator (--kid in "
                             "fairseq-generate) or informative_dialogue.kid.hf_kv_decoding.kid_kv_generate")
        if o.solver == "sigma":
            n = log_probs.size(0)
            if o.steps == 0:
                res = PolicyUpdateResult(log_probs.clone(), state.beta, torch.zeros(n, device=log_probs.device),
                                         torch.zeros(n, dtype=torch.bool, device=log_probs.device))
            else:
                index, valid = self.demo_index(state, trie_indices, log_probs.size(1), log_probs.device, active)
                sol = sigma_solve(log_probs, o.sigma, index, valid)
                res = PolicyUpdateResult(sol.log_probs, state.beta, sol.kl, sol.updated)
        else:
            mask = self.demo_mask(state, trie_indices, log_probs.size(1), log_probs.device, active)
            res = kid_policy_update(log_probs, mask, state.beta, steps=o.steps, lr=o.lr, sigma=o.sigma)
        state.beta = res.beta
        if logger.isEnabledFor(logging.DEBUG):
            n_up = int(res.updated.sum())
            logger.debug(
                "KID step: %d/%d rows updated, mean KL %.4f, mean beta %.3g",
                n_up, len(state), float(res.kl[res.updated].mean()) if n_up else 0.0, float(res.beta.mean()),
            )
        return res
