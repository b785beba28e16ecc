"""Pinned end-to-end KID decodes: a tiny seeded transformer, the toy knowledge tries, beam 3,
with Algorithm 1 (Adam), Little KID and the sigma-solver. The hypotheses (token ids) and their
scores were recorded from the code as of this file's commit; a change in any part of the KID
path (memory, trie query, token mapping, policy update, generator) changes them. Re-record
deliberately with ``python3 -m tests.test_pinned_kid`` and review the diff."""
from __future__ import annotations

import pprint

import pytest
from fairseq.data import Dictionary

from fairseq_plugins.generation.kid_generator import KIDSequenceGenerator
from informative_dialogue.kid.trie import WordNormalizer
from tests.test_kid_generator import SENTS, WORDS, batch, hyps, make_core, tiny_translation_model, toy_tries

CASES = {
    "adam": dict(hops=2, lr=1.0),
    "little": dict(hops=2, lr=1.0, mode="little"),
    "sigma": dict(hops=2, solver="sigma", sigma=0.5),
}

PINNED: dict = {'adam': [[([9, 9, 9, 9, 9, 9, 9, 9, 2], -1.06094),
           ([9, 9, 9, 9, 9, 9, 0, 9, 2], -1.20407),
           ([9, 9, 0, 9, 9, 9, 9, 9, 2], -1.21064)],
          [([15, 15, 29, 15, 15, 15, 15, 15, 2], -1.361),
           ([15, 15, 15, 15, 15, 15, 15, 15, 2], -1.37376),
           ([15, 15, 15, 15, 15, 15, 29, 15, 2], -1.43167)],
          [([14, 29, 29, 29, 29, 29, 29, 29, 2], -1.33333),
           ([9, 9, 9, 9, 9, 9, 9, 9, 2], -1.35242),
           ([0, 0, 0, 0, 0, 0, 0, 0, 2], -1.39567)]],
 'little': [[([9, 9, 9, 9, 9, 9, 9, 9, 2], -1.09261),
             ([9, 9, 9, 9, 9, 9, 0, 9, 2], -1.23564),
             ([9, 9, 0, 9, 9, 9, 9, 9, 2], -1.24157)],
            [([15, 15, 29, 15, 15, 15, 15, 15, 2], -1.361),
             ([15, 15, 15, 15, 15, 15, 15, 15, 2], -1.37376),
             ([15, 15, 15, 15, 15, 15, 29, 15, 2], -1.43167)],
            [([14, 29, 29, 29, 29, 29, 29, 29, 2], -1.33333),
             ([9, 9, 9, 9, 9, 9, 9, 9, 2], -1.35242),
             ([0, 0, 0, 0, 0, 0, 0, 0, 2], -1.39567)]],
 'sigma': [[([9, 9, 9, 9, 9, 9, 9, 9, 2], -0.8885),
            ([10, 9, 9, 9, 9, 9, 9, 9, 2], -1.14823),
            ([9, 9, 9, 9, 9, 9, 9, 10, 2], -1.19124)],
           [([15, 15, 15, 15, 15, 15, 15, 15, 2], -1.14744),
            ([17, 17, 17, 17, 17, 17, 17, 17, 2], -1.18966),
            ([15, 15, 15, 15, 15, 15, 15, 29, 2], -1.37994)],
           [([14, 29, 29, 29, 29, 29, 29, 29, 2], -1.33333),
            ([9, 9, 9, 9, 9, 9, 9, 9, 2], -1.35242),
            ([0, 0, 0, 0, 0, 0, 0, 0, 2], -1.39567)]]}


def decode(name: str) -> list:
    d = Dictionary()
    for w in WORDS:
        d.add_symbol(w)
    norm = WordNormalizer()
    _, model = tiny_translation_model(d, seed=5)
    core = make_core(d, norm, toy_tries(norm), **CASES[name])
    gen = KIDSequenceGenerator([model], d, beam_size=3, max_len_b=8, kid_core=core)
    return hyps(gen.generate([model], batch(d, SENTS)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_kid_decode_is_pinned(name: str) -> None:
    got, want = decode(name), PINNED[name]
    assert [[tokens for tokens, _ in sent] for sent in got] == [[tokens for tokens, _ in sent] for sent in want]
    assert [score for sent in got for _, score in sent] == pytest.approx(
        [score for sent in want for _, score in sent], abs=2e-5)


def test_the_cases_differ_from_each_other() -> None:
    """The pins are not one output three times: each update mode decodes differently."""
    assert PINNED["adam"] != PINNED["sigma"] and PINNED["adam"] != PINNED["little"]


if __name__ == "__main__":
    pprint.pprint({name: decode(name) for name in sorted(CASES)}, width=110)
