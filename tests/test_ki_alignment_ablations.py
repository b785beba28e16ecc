"""Tests of data_prep.ki.alignment_ablations: each ablation mode on hand cases, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from informative_dialogue.ki.alignment_text import read_alignments
from informative_dialogue.errors import CorpusError
from data_prep.ki.alignment_ablations import (
    load_tagger,
    main,
    majority_id,
    pos_filter_alignments,
    random_alignments,
    sentence_alignments,
    token_pos_tags,
)
from data_prep.ki.knowledge_sources import KnowledgeItem
from data_prep.ki.knowledge_base import write_knowledge_base

# two lines: "the dogs eat food" / "i run quickly ."
SOURCE = "the dog ##s eat food\ni run quickly .\n"
ALIGN = "0 5 5 7 9\n3 0 4 0\n"
ROWS = [np.array([0, 5, 5, 7, 9]), np.array([3, 0, 4, 0])]


def as_lists(rows):
    return [r.tolist() for r in rows]


def test_random_aligned_scope_hand_case():
    # N = 1: every token that had knowledge gets id 1, the others stay 0
    assert as_lists(random_alignments(ROWS, n_items=1)) == [[0, 1, 1, 1, 1], [1, 0, 1, 0]]
    assert as_lists(random_alignments(ROWS, n_items=1, scope="all")) == [[1, 1, 1, 1, 1], [1, 1, 1, 1]]


def test_random_seeded():
    rows = [np.arange(50) % 3, np.zeros(7, dtype=np.int64), np.ones(30, dtype=np.int64)]
    a = random_alignments(rows, n_items=1000, seed=1)
    assert as_lists(a) == as_lists(random_alignments(rows, n_items=1000, seed=1))
    assert as_lists(a) != as_lists(random_alignments(rows, n_items=1000, seed=2))
    for before, after in zip(rows, a):
        assert after.dtype == np.int64 and after.shape == before.shape
        assert ((after > 0) == (before > 0)).all() and after.max(initial=1) <= 1000
    full = random_alignments(rows, n_items=1000, seed=1, scope="all")
    assert all((r >= 1).all() and (r <= 1000).all() for r in full)
    assert rows[0].tolist() == (np.arange(50) % 3).tolist()  # input untouched


def test_sentence_hand_case():
    rows = [np.array([0, 5, 5, 7, 9]), np.array([8, 0, 4, 0]), np.array([0, 0])]
    # line 1: 5 is most frequent; line 2: 4 and 8 tie -> the smaller, 4; line 3: no knowledge
    assert as_lists(sentence_alignments(rows)) == [[0, 5, 5, 5, 5], [4, 0, 4, 0], [0, 0]]
    assert as_lists(sentence_alignments(rows, scope="all")) == [[5, 5, 5, 5, 5], [4, 4, 4, 4], [0, 0]]
    assert majority_id(np.array([2, 2, 9, 9, 9, 0, 0, 0])) == 9


def test_pos_filter_hand_case():
    tags = [["DET", "NOUN", "NOUN", "VERB", "PROPN"], ["PRON", "VERB", "ADV", "PUNCT"]]
    assert as_lists(pos_filter_alignments(ROWS, tags, "factual")) == [[0, 5, 5, 0, 9], [0, 0, 0, 0]]
    assert as_lists(pos_filter_alignments(ROWS, tags, "linguistic")) == [[0, 0, 0, 7, 0], [3, 0, 4, 0]]
    with pytest.raises(ValueError, match="row 1"):
        pos_filter_alignments(ROWS, [tags[0], tags[1][:3]], "factual")


@pytest.fixture(scope="module")
def nlp():
    return load_tagger()


def test_token_pos_tags_spacy(nlp):
    tokens = [line.split() for line in SOURCE.splitlines()] + [[]]
    assert token_pos_tags(tokens, nlp) == [
        ["DET", "NOUN", "NOUN", "VERB", "NOUN"],  # "dogs" tagged once, for both of its tokens
        ["PRON", "VERB", "ADV", "PUNCT"],
        [],
    ]


def write_case(tmp_path, source=SOURCE, align=ALIGN):
    (tmp_path / "x.src").write_text(source, encoding="utf-8")
    (tmp_path / "x.align").write_text(align, encoding="utf-8")
    return ["--align", str(tmp_path / "x.align"), "--source", str(tmp_path / "x.src")]


@pytest.mark.parametrize(
    "mode, expected",
    [("factual", "0 5 5 0 9\n0 0 0 0\n"), ("linguistic", "0 0 0 7 0\n3 0 4 0\n"), ("sentence", "0 5 5 5 5\n3 0 3 0\n")],
)
def test_cli_modes(tmp_path, nlp, mode, expected):
    out = tmp_path / "out.align"
    stats = main(["--mode", mode, "--output", str(out)] + write_case(tmp_path))
    assert out.read_text() == expected
    saved = json.loads((tmp_path / "out.align.stats.json").read_text())
    assert saved == stats and saved["tokens_with_knowledge_before"] == 6 and saved["lines"] == 2


def test_cli_random_with_knowledge_base(tmp_path):
    write_knowledge_base(tmp_path / "kb", [KnowledgeItem("wordnet", f"w{i}", f"w{i}: text") for i in range(1, 10)])
    args = ["--mode", "random", "--knowledge-base", str(tmp_path / "kb"), "--seed", "3"] + write_case(tmp_path)
    main(args + ["--output", str(tmp_path / "a.align")])
    main(args + ["--output", str(tmp_path / "b.align")])
    a = read_alignments(tmp_path / "a.align", tmp_path / "x.src")  # same shape as the source
    assert (tmp_path / "a.align").read_text() == (tmp_path / "b.align").read_text()
    assert as_lists([r > 0 for r in a]) == as_lists([r > 0 for r in ROWS]) and max(r.max() for r in a) <= 9
    with pytest.raises(SystemExit):
        main(["--mode", "random", "--output", str(tmp_path / "c.align")] + write_case(tmp_path))
    with pytest.raises(CorpusError, match=r"x.align:1: knowledge id 9 exceeds the knowledge base size 8"):
        main(["--mode", "sentence", "--num-items", "8", "--output", str(tmp_path / "d.align")] + write_case(tmp_path))


def test_cli_shape_mismatch(tmp_path):
    with pytest.raises(CorpusError, match=r"x.align:2: 3 knowledge ids but .*x.src line 2 has 4 tokens"):
        main(["--mode", "sentence", "--output", str(tmp_path / "o.align")]
             + write_case(tmp_path, align="0 5 5 7 9\n3 0 4\n"))
    with pytest.raises(CorpusError, match="1 alignment lines but"):
        main(["--mode", "sentence", "--output", str(tmp_path / "o.align")]
             + write_case(tmp_path, align="0 5 5 7 9\n"))
