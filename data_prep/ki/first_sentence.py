"""The first sentence of a Wikipedia extract: the lexical knowledge item of the KI paper (§4.1)
is an article's title plus its first sentence (:func:`first_sentence`, rules in its docstring).
"""
from __future__ import annotations

import re

from data_prep.common import one_line
from informative_dialogue.stop_words import english_stop_words

# never a sentence end after these (titles, "c. 1900", "e.g.")
_ABBREV_ALWAYS = frozenset(
    """mr mrs ms messrs mme mlle dr prof st mt ft sen rep gov gen col lt sgt capt cpt adm maj cmdr
    rev hon pres fr c ca fl approx cf vs v viz e.g i.e a.k.a lit var ssp subsp spp sp""".split()
)
# no sentence end when a number follows ("No. 5", "Jan. 1", "b. 1965")
_ABBREV_BEFORE_NUMBER = frozenset(
    "no nos vol vols pp p op ch fig figs art jan feb mar apr jun jul aug sep sept oct nov dec b d r est".split()
)
# a sentence end only when a function word follows ("... in the U.S. It is ...")
_ABBREV_SOFT = frozenset("etc inc ltd co corp bros jr sr al plc llc".split())
_DOTTED_RE = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]$")
_CANDIDATE_RE = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s)")
_OPENERS = "\"'\u201c\u2018([\u00bf\u00a1"
_CLOSERS_AND_OPENERS = "\"'\u201c\u201d\u2018\u2019()[]"


def _previous_word(text: str, end: int) -> str:
    """The word before position ``end`` (a terminal ``.``), without leading brackets/quotes."""
    start = end
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:end].lstrip(_CLOSERS_AND_OPENERS)


def _next_word(text: str, start: int) -> str:
    m = re.match(r"\s*(\S+)", text[start:])
    return m.group(1).strip(_CLOSERS_AND_OPENERS + ",;:.") if m else ""


def _is_boundary(text: str, punct_start: int, punct: str, after: int) -> bool:
    """Whether the terminal punctuation ``text[punct_start:after]`` ends a sentence."""
    nxt = _next_word(text, after)
    if not nxt:
        return True
    rest = text[after:].lstrip()
    first = rest[0]
    if not (first.isupper() or first.isdigit() or first in _OPENERS):
        return False
    if not punct.startswith(".") or punct.startswith(".."):
        return True  # "!", "?", an ellipsis
    word = _previous_word(text, punct_start)
    low = word.lower()
    soft = False
    if low in _ABBREV_ALWAYS:
        return False
    if low in _ABBREV_BEFORE_NUMBER and first.isdigit():
        return False
    if low in _ABBREV_SOFT or _DOTTED_RE.match(word) or (len(word) == 1 and word.isalpha() and word.isupper()):
        soft = True
    if soft:
        return nxt.lower() in english_stop_words()
    return True


def _first_boundary(text: str, use_depth: bool) -> int | None:
    depth = 0
    pos = 0
    for m in _CANDIDATE_RE.finditer(text):
        if use_depth:
            for ch in text[pos : m.end()]:
                if ch in "([":
                    depth += 1
                elif ch in ")]":
                    depth = max(0, depth - 1)
            pos = m.end()
            if depth > 0:
                continue
        punct = m.group(0).rstrip("\"'\u201d\u2019)]")
        if _is_boundary(text, m.start(), punct, m.end()):
            return m.end()
    return None


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (whitespace-normalised to one line; ``""`` for blank).

    Rules: line breaks count as spaces (Wikipedia extracts break lines inside sentences where
    markup was removed); a sentence ends at ``.``/``!``/``?`` (with
    any closing quotes/brackets) followed by whitespace and an upper-case letter, a digit or
    an opening quote/bracket, outside parentheses, and not after an abbreviation: titles and
    ``c.``/``ca.``/``e.g.`` never end one ("St. Louis", "c. 1900"), ``No.``/``Jan.``/``b.`` not
    before a number, initials/dotted acronyms/``Inc.``/``etc.`` only when a function word
    follows ("J. K. Rowling" but "... in the U.S. It is ..."). Unbalanced parentheses fall
    back to ignoring them."""
    text = one_line(text)
    if not text:
        return ""
    end = _first_boundary(text, use_depth=True)
    if end is None and text.count("(") + text.count("[") != text.count(")") + text.count("]"):
        end = _first_boundary(text, use_depth=False)
    return one_line(text if end is None else text[:end])
