"""Knowledge words <-> model token ids, for the subword vocabularies KID meets.

Supported schemes (auto-detected from the symbols, or forced):

* ``wordpiece``: BERT WordPiece, continuation pieces start with ``##``
  ("carbon" -> ``carbon``; "impair" -> ``imp ##air``);
* ``sentencepiece``: word-initial pieces start with ``▁`` (U+2581);
* ``gpt2``: byte-level BPE (GPT-2, SmolLM2, ...), word-initial pieces start with ``Ġ`` (the
  byte-level form of a space) -- the form a word takes after a space;
* ``subword_nmt``: non-final pieces end with ``@@`` (fairseq's default BPE);
* ``word``: whole words, no subwords.

Encoding (words -> ids) always produces the *word-initial* form ("car" -> ``Ġcar`` /
``▁car``, never a mid-word piece) by greedy longest match over the vocabulary (exactly
WordPiece's algorithm; an approximation of BPE/unigram segmentation -- pass ``encode_fn``
(e.g. a Hugging Face tokenizer's ``encode(" " + word)``) for the exact segmentation). With
``subwords="first"`` only the first piece of each word is a demonstration token, with
``"all"`` every piece. Words that cannot be segmented (would need ``[UNK]`` or a bare marker
piece) are skipped. Special symbols are never demonstration tokens.

Decoding (ids -> words) is incremental: :meth:`TokenMapper.piece` tells for each id its text,
whether it starts a new word, whether it joins the next piece (``@@``) and whether it is a
boundary (special symbol or pure punctuation), which
:class:`~informative_dialogue.kid.memory.EntityMemory` uses to detect completed words.

Note on fairseq ``--bpe gpt2`` dictionaries: their symbols are GPT-2 token *ids* written as
numbers; give ``symbol_map`` (GPT-2 ``encoder.json`` inverted: ``"464" -> "The"``) to map them.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set

from informative_dialogue.kid.options import SUBWORD_RULES, KIDOptions

logger = logging.getLogger(__name__)

__all__ = ["TokenMapper", "Piece", "detect_scheme", "bytes_to_unicode", "load_gpt2_symbol_map", "SCHEMES"]

SCHEMES = ("auto", "wordpiece", "sentencepiece", "gpt2", "subword_nmt", "word")
SPM_MARK = "\u2581"
GPT2_MARK = "\u0120"
_SPECIAL_RE = re.compile(r"^(<[^<>\s]*>|\[[A-Z_]+\]|__\w+__|madeupword\d+|<\|[^|]*\|>)$")


def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table (space -> ``Ġ``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def detect_scheme(symbols: Sequence[str]) -> str:
    """The scheme whose markers the vocabulary uses most (``word`` if it uses none)."""
    counts = {"wordpiece": 0, "sentencepiece": 0, "gpt2": 0, "subword_nmt": 0}
    for s in symbols:
        if len(s) > 2 and s.startswith("##"):
            counts["wordpiece"] += 1
        elif s.startswith(SPM_MARK):
            counts["sentencepiece"] += 1
        elif s.startswith(GPT2_MARK):
            counts["gpt2"] += 1
        elif len(s) > 2 and s.endswith("@@"):
            counts["subword_nmt"] += 1
    best = max(counts, key=counts.get)
    return best if counts[best] > 0 else "word"


def load_gpt2_symbol_map(encoder_json: str | os.PathLike) -> Dict[str, str]:
    """``{"464": "The", ...}`` from a GPT-2 ``encoder.json`` (for fairseq ``--bpe gpt2`` dictionaries)."""
    with open(encoder_json, encoding="utf-8") as f:
        enc = json.load(f)
    return {str(i): tok for tok, i in enc.items()}


@dataclass(frozen=True)
class Piece:
    """Decoding view of one token id.

    Attributes:
        text: the piece without markers (for ``gpt2``: its bytes as latin-1 characters).
        starts_word: the piece begins a new word (unless the previous piece joins it).
        joins_next: the piece continues into the next one (``@@``).
        boundary: special symbol or pure punctuation: ends the current word, is no word.
    """

    text: str
    starts_word: bool
    joins_next: bool
    boundary: bool


class TokenMapper:
    """Map knowledge words to token ids of one vocabulary and classify ids for decoding.

    Args:
        symbols: the vocabulary, ``symbols[i]`` = string of token id ``i``.
        special_ids: ids never used as demonstrations (pad, eos, unk, bos, ...); symbols that
            look special (``<s>``, ``[CLS]``, ``<|endoftext|>``, ``madeupword0001``) are added.
        scheme: one of :data:`SCHEMES` (``auto`` detects it from ``symbols``).
        subwords: ``first`` (first piece of each word) or ``all`` (every piece).
        encode_fn: optional ``word -> ids`` with the word-initial marker already applied;
            replaces the greedy segmentation.
        lowercase_vocab: whether the vocabulary is lower-cased (detected when ``None``).
    """

    def __init__(
        self,
        symbols: Sequence[str],
        special_ids: Iterable[int] = (),
        scheme: str = "auto",
        subwords: str = KIDOptions.subwords,
        encode_fn: Optional[Callable[[str], Sequence[int]]] = None,
    ) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"scheme {scheme!r} not in {SCHEMES}")
        if subwords not in SUBWORD_RULES:
            raise ValueError(f"subwords must be one of {', '.join(SUBWORD_RULES)}, got {subwords!r}")
        self.symbols = list(symbols)
        self.scheme = detect_scheme(self.symbols) if scheme == "auto" else scheme
        self.subwords = subwords
        self.encode_fn = encode_fn
        self.special: Set[int] = set(int(i) for i in special_ids)
        self.special.update(i for i, s in enumerate(self.symbols) if _SPECIAL_RE.match(s))
        self.vocab: Dict[str, int] = {}
        for i, s in enumerate(self.symbols):
            self.vocab.setdefault(s, i)
        self._max_len = min(max((len(s) for s in self.symbols), default=1), 64)
        self._byte_enc = bytes_to_unicode() if self.scheme == "gpt2" else {}
        self._byte_dec = {c: b for b, c in self._byte_enc.items()}
        self._word_cache: Dict[str, List[int]] = {}
        self._pieces: Dict[int, Piece] = {}
        logger.debug("TokenMapper: %d symbols, scheme %s, subwords %s", len(self.symbols), self.scheme, subwords)

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def from_fairseq_dictionary(
        cls,
        dictionary,
        scheme: str = "auto",
        subwords: str = KIDOptions.subwords,
        symbol_map: Optional[Mapping[str, str]] = None,
    ) -> "TokenMapper":
        """From a ``fairseq.data.Dictionary`` (special ids: the first ``nspecial`` symbols)."""
        symbols = list(dictionary.symbols)
        if symbol_map:
            symbols = [symbol_map.get(s, s) for s in symbols]
        special = set(range(dictionary.nspecial)) | {dictionary.pad(), dictionary.eos(), dictionary.unk(), dictionary.bos()}
        return cls(symbols, special_ids=special, scheme=scheme, subwords=subwords)

    @classmethod
    def from_hf_tokenizer(cls, tokenizer, subwords: str = KIDOptions.subwords, use_tokenizer: bool = True) -> "TokenMapper":
        """From a Hugging Face tokenizer; ``use_tokenizer`` segments words with the tokenizer itself."""
        n = len(tokenizer)
        symbols = tokenizer.convert_ids_to_tokens(list(range(n)))
        symbols = [s if s is not None else "" for s in symbols]
        mapper = cls(symbols, special_ids=tokenizer.all_special_ids, subwords=subwords)
        if use_tokenizer:
            prefix = "" if mapper.scheme in ("wordpiece", "word") else " "

            def encode(word: str) -> List[int]:
                ids = tokenizer.encode(prefix + word, add_special_tokens=False)
                if mapper.scheme == "sentencepiece" and ids and tokenizer.convert_ids_to_tokens(ids[0]) == SPM_MARK:
                    ids = []  # a bare "▁" would reward every word start
                return list(ids)

            mapper.encode_fn = encode
        return mapper

    # -- words -> ids ---------------------------------------------------------------------
    def _longest(self, s: str, start: int, prefix: str = "", suffix: str = "", final_ok: bool = True) -> Optional[tuple]:
        for end in range(min(len(s), start + self._max_len), start, -1):
            piece = s[start:end]
            if end == len(s) and final_ok and (prefix + piece) in self.vocab:
                return self.vocab[prefix + piece], end
            if suffix and end < len(s) and (prefix + piece + suffix) in self.vocab:
                return self.vocab[prefix + piece + suffix], end
            if not suffix and end < len(s) and (prefix + piece) in self.vocab:
                return self.vocab[prefix + piece], end
        return None

    def _segment(self, word: str) -> List[int]:
        sch = self.scheme
        if sch == "word":
            i = self.vocab.get(word)
            return [i] if i is not None else []
        if sch == "wordpiece":
            s, ids, pos = word, [], 0
            while pos < len(s):
                hit = self._longest(s, pos, prefix="" if pos == 0 else "##")
                if hit is None:
                    return []
                ids.append(hit[0])
                pos = hit[1]
            return ids
        if sch == "subword_nmt":
            s, ids, pos = word, [], 0
            while pos < len(s):
                hit = self._longest(s, pos, suffix="@@")
                if hit is None:
                    return []
                ids.append(hit[0])
                pos = hit[1]
            return ids
        # sentencepiece / gpt2: the marker is the first character of the first piece
        if sch == "gpt2":
            s = GPT2_MARK + "".join(self._byte_enc[b] for b in word.encode("utf-8"))
            mark = GPT2_MARK
        else:
            s = SPM_MARK + word
            mark = SPM_MARK
        ids, pos = [], 0
        while pos < len(s):
            hit = self._longest(s, pos)
            if hit is None:
                return []
            if pos == 0 and hit[1] == len(mark):
                return []  # only a bare marker piece fits: no word-initial piece for this word
            ids.append(hit[0])
            pos = hit[1]
        return ids

    def word_ids(self, word: str) -> List[int]:
        """Token ids rewarded for ``word`` (first piece or all pieces; [] if unmappable)."""
        cached = self._word_cache.get(word)
        if cached is None:
            ids = list(self.encode_fn(word)) if self.encode_fn is not None else self._segment(word)
            if ids and self.subwords == "first":
                ids = ids[:1]
            cached = [i for i in ids if i not in self.special]
            if not cached:
                logger.debug("TokenMapper: no token for knowledge word %r", word)
            self._word_cache[word] = cached
        return cached

    def words_to_ids(self, words: Iterable[str]) -> List[int]:
        """Union of :meth:`word_ids` over ``words`` (sorted, distinct)."""
        out: Set[int] = set()
        for w in words:
            out.update(self.word_ids(w))
        return sorted(out)

    # -- ids -> words ---------------------------------------------------------------------
    def piece(self, token_id: int) -> Piece:
        """How token ``token_id`` takes part in words (cached)."""
        p = self._pieces.get(token_id)
        if p is not None:
            return p
        if token_id in self.special or not 0 <= token_id < len(self.symbols):
            p = Piece("", True, False, True)
        else:
            s = self.symbols[token_id]
            sch = self.scheme
            joins = False
            if sch == "wordpiece":
                starts = not s.startswith("##")
                text = s if starts else s[2:]
            elif sch == "sentencepiece":
                starts = s.startswith(SPM_MARK)
                text = s[1:] if starts else s
            elif sch == "gpt2":
                starts = s.startswith(GPT2_MARK)
                text = "".join(chr(self._byte_dec[c]) if c in self._byte_dec else c for c in s)
                text = text[1:] if starts else text
            elif sch == "subword_nmt":
                joins = s.endswith("@@")
                text = s[:-2] if joins else s
                starts = True
            else:
                starts, text = True, s
            # no letter/digit (GPT-2: bytes >= 128 may be parts of letters, never boundaries)
            boundary = all(not c.isalnum() and (sch != "gpt2" or ord(c) < 128) for c in text)
            p = Piece(text, starts, joins, boundary)
        self._pieces[token_id] = p
        return p

    def finish_word(self, text: str) -> str:
        """Text of a completed word from its concatenated piece texts (decodes GPT-2 bytes)."""
        if self.scheme == "gpt2":
            return text.encode("latin-1", errors="ignore").decode("utf-8", errors="ignore")
        return text

    def decode_words(self, ids: Iterable[int]) -> List[str]:
        """Whole words of a token sequence (punctuation and special symbols dropped)."""
        words: List[str] = []
        buf, joins = "", False
        for i in ids:
            p = self.piece(int(i))
            if p.boundary or (p.starts_word and not joins):
                if buf:
                    words.append(self.finish_word(buf))
                buf = "" if p.boundary else p.text
            else:
                buf += p.text
            joins = p.joins_next and not p.boundary
        if buf:
            words.append(self.finish_word(buf))
        return words
