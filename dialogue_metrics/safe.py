"""%safe: how often a system falls back on generic "safe" responses such as "i don't know"."""
from __future__ import annotations

import os
import re
from typing import Iterable, Sequence

from informative_dialogue import text_io

DEFAULT_SAFE_PHRASES = ("i'm not sure", "i don't know")

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'", "\u02bc": "'"})
# "i ' m", "don ' t", "you ' re" (WordPiece splits) -> "i'm", "don't", "you're"
_SPLIT_CONTRACTION = re.compile(r"(\w)\s*'\s*(m|s|t|re|ve|ll|d)\b")
# "do n't", "ca n't" (Penn Treebank / Moses splits) -> "don't", "can't"
_SPLIT_NT = re.compile(r"(\w)\s+n\s*'\s*t\b")
_INNER_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")


def normalize_for_safe(text: str) -> str:
    """Normalise text so that tokenisation variants of a phrase compare equal.

    Steps: lower-case; map the apostrophe-like characters ``’ ‘ ` ´ ʼ`` to ``'``; collapse
    whitespace; re-join contractions split by WordPiece (``"i ' m"``, ``"don ' t"``) or by
    Treebank/Moses tokenisers (``"do n't"``); finally drop apostrophes inside words
    (``"don't"`` -> ``"dont"``), so that ``"i dont know"`` also matches. Thus ``"i ' m not
    sure"``, ``"i'm not sure"``, ``"I’m not sure"`` all become ``"im not sure"``.
    """
    text = " ".join(text.lower().translate(_APOSTROPHES).split())
    text = _SPLIT_NT.sub(r"\1n't", text)
    text = _SPLIT_CONTRACTION.sub(r"\1'\2", text)
    return _INNER_APOSTROPHE.sub("", text)


def compile_phrases(phrases: Iterable[str]) -> re.Pattern:
    """One regex matching any of ``phrases`` (normalised) as a whole-word sequence."""
    normalized = {normalize_for_safe(p) for p in phrases if p.strip()}
    if not normalized:
        raise ValueError("no safe phrases given")
    # longest first, so that a phrase is not cut short by a shorter one it starts with
    alternatives = "|".join(re.escape(p) for p in sorted(normalized, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def safe_response_rate(
    responses: Sequence[str], phrases: Iterable[str] = DEFAULT_SAFE_PHRASES
) -> float:
    """%safe: percentage (0-100) of responses containing at least one safe phrase.

    Definition: ``100 * |{r : some phrase occurs in normalize_for_safe(r)}| / |responses|``,
    where a phrase occurs if its own normalised form appears with no word character directly
    before or after it (so "i don't knowledge" does not contain "i don't know"). Default
    phrases: "i'm not sure", "i don't know". Empty responses count in the denominator (and
    never match). 0.0 for no responses.
    """
    if not responses:
        return 0.0
    pattern = compile_phrases(phrases)
    hits = sum(1 for r in responses if pattern.search(normalize_for_safe(r)))
    return 100.0 * hits / len(responses)


def load_phrases(path: str | os.PathLike) -> list[str]:
    """Safe phrases from a file: one per line; blank lines and lines starting with ``#`` are
    ignored."""
    phrases = [line.strip() for line in text_io.iter_lines(path)]  # UTF-8; errors name the file and line
    phrases = [p for p in phrases if p and not p.startswith("#")]
    if not phrases:
        raise ValueError(f"{os.fspath(path)}: no safe phrases found")
    return phrases
